"""The deployment path: exported graphs (ONNX, ``torch.export`` ``.pt2``) and int8 weights.

- :mod:`attnlab.export.graph`: :func:`export_model`, :func:`load_graph` and the pieces each model exports.
- :mod:`attnlab.export.seq2seq`: the encoder–decoder Transformer as an encoder graph and a decoder
  step graph with its key/value cache as inputs/outputs, and :func:`greedy_decode` with them.
- :mod:`attnlab.export.lm`: a Transformer LM's decoding step with its key/value cache as
  inputs/outputs, and :func:`greedy_generate` with it.
- :mod:`attnlab.export.int8`: :func:`quantize_int8`, int8 Linear layers (torchao), and
  :func:`compile_linears`, the compiled fast path for them.
"""

from attnlab.export.graph import FORMATS, export_model, graphs_of, load_graph
from attnlab.export.int8 import INT8_MODES, compile_linears, is_int8, quantize_int8
from attnlab.export.lm import greedy_generate, lm_cache_zeros
from attnlab.export.seq2seq import greedy_decode, self_cache_zeros

__all__ = ["FORMATS", "INT8_MODES", "compile_linears", "export_model", "graphs_of", "greedy_decode", "greedy_generate", "is_int8",
           "lm_cache_zeros", "load_graph", "quantize_int8", "self_cache_zeros"]
