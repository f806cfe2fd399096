"""What every ONNX graph edgeppt writes declares: one opset for the search's latency probes, the exporter, the
floor's microbenchmarks and the bundle tools, so a latency measured in the search is of the graph that ships."""

OPSET = 20  # TensorRT 10 and onnxruntime >= 1.17 parse it; int8/fp16 conversions keep it
