"""What every ONNX graph edgeppt writes declares: one opset for the search's latency probes, the exporter, the
floor's microbenchmarks and the bundle tools, so a latency measured in the search is of the graph that ships."""

OPSET = 20  # TensorRT 10 and onnxruntime >= 1.17 parse it; int8/fp16 conversions keep it
# The IR version of graphs built with onnx.helper: the oldest that declares OPSET. onnx.helper's default is the
# installed onnx package's newest IR, which an older onnxruntime refuses ("Unsupported model IR version: 14, max
# supported IR version: 13", seen with onnx 1.23 beside onnxruntime 1.30 on a GPU machine).
IR_VERSION = 9
