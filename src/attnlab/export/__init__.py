"""The deployment path: exported graphs (ONNX, ``torch.export`` ``.pt2``), CTranslate2 models
and int8 weights.

- :mod:`attnlab.export.formats`: the table of export formats, one adapter each
  (:mod:`~attnlab.export.onnx`, :mod:`~attnlab.export.pt2`, :mod:`~attnlab.export.ctranslate2`;
  the contract: :mod:`attnlab.export.adapter`), :func:`export_model`, :func:`load_graph`.
- :mod:`attnlab.export.graph`: what each model exports as, and the all-or-nothing graph sets.
- :mod:`attnlab.export.inputs`: what an exported model expects, stored in every export.
- :mod:`attnlab.export.seq2seq`: the encoder–decoder Transformer as an encoder graph and a decoder
  step graph with its key/value cache as inputs/outputs, and :func:`greedy_decode` with them.
- :mod:`attnlab.export.lm`: a Transformer LM's decoding step with its key/value cache as
  inputs/outputs, and :func:`greedy_generate` with it.
- :mod:`attnlab.export.int8`: :func:`quantize_int8`, int8 Linear layers (torchao), and
  :func:`compile_linears`, the compiled fast path for them.
"""

from attnlab.export.formats import FORMATS, export_model, load_graph, read_export_record
from attnlab.export.graph import graphs_of
from attnlab.export.inputs import describe_inputs
from attnlab.export.int8 import INT8_MODES, compile_linears, is_int8, quantize_int8
from attnlab.export.lm import greedy_generate, lm_cache_zeros
from attnlab.export.seq2seq import greedy_decode, self_cache_zeros

__all__ = ["FORMATS", "INT8_MODES", "compile_linears", "describe_inputs", "export_model", "graphs_of", "greedy_decode",
           "greedy_generate", "is_int8", "lm_cache_zeros", "load_graph", "quantize_int8", "read_export_record",
           "self_cache_zeros"]
