"""What a layer's constructor creates, without constructing it: its parameters, buffers and children.

``modelspec validate`` checks ties, ``trainable:`` and init rules against the names, shapes
and dtypes of the built model's tensors. For the layers described here it reads them from
:func:`describe` instead of building on ``meta`` (which imports torch): ``Linear(4, 8)``
gives ``weight`` [8, 4] and ``bias`` [8]. The formulas are plain Python, one function per
constructor, with the constructor's own parameters and defaults (a test compares both with
the registry's entries, and every formula with the constructed layer over a grid of
arguments). Where a constructor would refuse its arguments a formula returns None, and so
does :func:`describe` for any layer not described here: the caller then builds on ``meta``,
so the answer is always the constructor's. The formulas are used only with the torch version
they were checked against (:data:`CHECKED_WITH`; another one builds on ``meta``): a test
fails when the installed torch differs, to be rerun and the version bumped.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CHECKED_WITH", "DESCRIBED", "LayerTensors", "Tensor", "describe", "formulas_hold"]

#: The torch version whose constructors the formulas were compared with (tests/test_validate_tiefree.py).
CHECKED_WITH = "2.13.0"


@functools.cache
def formulas_hold() -> bool:
    """Whether the installed torch is the one the formulas were checked against (read from
    the package's metadata: torch is not imported)."""
    try:
        return importlib.metadata.version("torch").split("+")[0] == CHECKED_WITH
    except importlib.metadata.PackageNotFoundError:
        return False


@dataclass(frozen=True)
class Tensor:
    """A parameter or buffer a constructor registers; ``shape`` None: registered as None."""

    name: str
    shape: tuple[int, ...] | None
    kind: str = "param"  # or "buffer"
    dtype: str = "float32"
    persistent: bool = True


@dataclass(frozen=True)
class LayerTensors:
    """A constructed layer: its tensors in registration order, its children in order, and
    the registry's layer names it is an instance of (what an init rule's ``layer:`` matches)."""

    isa: frozenset[str]
    tensors: tuple[Tensor, ...] = ()
    children: tuple[tuple[str, LayerTensors], ...] = ()


class _Refused(Exception):
    """The constructor would raise for these arguments."""


def _need(ok: bool) -> None:
    if not ok:
        raise _Refused


def _size(n: Any) -> int:
    _need(isinstance(n, int) and not isinstance(n, bool) and n >= 0)
    return n


def _sizes(value: Any, n: int) -> tuple[int, ...]:
    """torch's ``_ntuple``: an int repeated ``n`` times, or a sequence of ``n`` sizes."""
    if isinstance(value, (list, tuple)):
        _need(len(value) == n)
        return tuple(_size(v) for v in value)
    return (_size(value),) * n


def _shape(value: Any) -> tuple[int, ...]:  # LayerNorm's normalized_shape: an int or a sequence
    return tuple(_size(v) for v in value) if isinstance(value, (list, tuple)) else (_size(value),)


def _p(name: str, *shape: int) -> Tensor:
    return Tensor(name, tuple(shape))


def _none(*names: str, kind: str = "param") -> tuple[Tensor, ...]:
    return tuple(Tensor(n, None, kind) for n in names)


def _dropout_p(p: Any) -> None:
    _need(0.0 <= p <= 1.0)  # nn.Dropout's ValueError


# ---------------------------------------------------------------- the formulas
def _linear(in_features, out_features, bias=True):
    o, i = _size(out_features), _size(in_features)
    return LayerTensors(frozenset({"Linear"}), (_p("weight", o, i), _p("bias", o) if bias else _none("bias")[0]))


def _bilinear(in1_features, in2_features, out_features, bias=True):
    o = _size(out_features)
    weight = _p("weight", o, _size(in1_features), _size(in2_features))
    return LayerTensors(frozenset({"Bilinear"}), (weight, _p("bias", o) if bias else _none("bias")[0]))


def _conv(n: int, transposed: bool) -> Callable[..., LayerTensors]:
    name = f"ConvTranspose{n}d" if transposed else f"Conv{n}d"

    def tensors(
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, output_padding=0
    ):
        i, o, k = _size(in_channels), _size(out_channels), _sizes(kernel_size, n)
        _need(isinstance(groups, int) and groups > 0 and i % groups == 0 and o % groups == 0)
        _sizes(stride, n), _sizes(dilation, n), _sizes(output_padding, n)
        if isinstance(padding, str):
            _need(not transposed and padding in ("same", "valid"))
            _need(padding != "same" or all(s == 1 for s in _sizes(stride, n)))
        else:
            _sizes(padding, n)
        _need(padding_mode in (("zeros",) if transposed else ("zeros", "reflect", "replicate", "circular")))
        weight = _p("weight", i, o // groups, *k) if transposed else _p("weight", o, i // groups, *k)
        return LayerTensors(frozenset({name}), (weight, _p("bias", o) if bias else _none("bias")[0]))

    if transposed:

        def convt(
            in_channels,
            out_channels,
            kernel_size,
            stride=1,
            padding=0,
            output_padding=0,
            groups=1,
            bias=True,
            dilation=1,
            padding_mode="zeros",
        ):
            return tensors(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                           padding_mode, output_padding)  # fmt: skip

        return convt

    def conv(
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
    ):
        return tensors(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)

    return conv


def _padding_idx(num: int, padding_idx: Any) -> None:
    if padding_idx is not None:
        _need(-num <= padding_idx < num)  # Embedding's assertions


def _embedding(
    num_embeddings,
    embedding_dim,
    padding_idx=None,
    max_norm=None,
    norm_type=2.0,
    scale_grad_by_freq=False,
    sparse=False,
):
    num = _size(num_embeddings)
    _padding_idx(num, padding_idx)
    return LayerTensors(frozenset({"Embedding"}), (_p("weight", num, _size(embedding_dim)),))


def _layer_norm(normalized_shape, eps=1e-05, elementwise_affine=True, bias=True):
    shape = _shape(normalized_shape)
    if not elementwise_affine:
        return LayerTensors(frozenset({"LayerNorm"}), _none("weight", "bias"))
    tensors = (_p("weight", *shape), _p("bias", *shape) if bias else _none("bias")[0])
    return LayerTensors(frozenset({"LayerNorm"}), tensors)


def _rms_norm(normalized_shape, eps=None, elementwise_affine=True):
    shape = _shape(normalized_shape)
    return LayerTensors(frozenset({"RMSNorm"}), (_p("weight", *shape) if elementwise_affine else _none("weight")[0],))


def _affine(c: int, affine: bool, bias: bool) -> tuple[Tensor, ...]:
    if not affine:
        return _none("weight", "bias")
    return (_p("weight", c), _p("bias", c) if bias else _none("bias")[0])


def _group_norm(num_groups, num_channels, eps=1e-05, affine=True, bias=True):
    c = _size(num_channels)
    _need(isinstance(num_groups, int) and num_groups != 0 and c % num_groups == 0)
    return LayerTensors(frozenset({"GroupNorm"}), _affine(c, affine, bias))


def _norm(name: str, affine_default: bool) -> Callable[..., LayerTensors]:
    def norm(
        num_features, eps=1e-05, momentum=0.1, affine=affine_default, track_running_stats=affine_default, bias=True
    ):
        c = _size(num_features)
        if track_running_stats:
            stats = (Tensor("running_mean", (c,), "buffer"), Tensor("running_var", (c,), "buffer"),
                     Tensor("num_batches_tracked", (), "buffer", "int64"))  # fmt: skip
        else:
            stats = _none("running_mean", "running_var", "num_batches_tracked", kind="buffer")
        return LayerTensors(frozenset({name}), (*_affine(c, affine, bias), *stats))

    return norm


def _sync_batch_norm(
    num_features, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True, process_group=None, bias=True
):
    tensors = _norm("SyncBatchNorm", True)(num_features, eps, momentum, affine, track_running_stats, bias)
    return tensors


def _prelu(num_parameters=1, init=0.25):
    return LayerTensors(frozenset({"PReLU"}), (_p("weight", _size(num_parameters)),))


def _mha(
    embed_dim,
    num_heads,
    dropout=0.0,
    bias=True,
    add_bias_kv=False,
    add_zero_attn=False,
    kdim=None,
    vdim=None,
    batch_first=False,
):
    e = _size(embed_dim)
    _need(isinstance(num_heads, int) and e > 0 and num_heads > 0 and (e // num_heads) * num_heads == e)
    k = e if kdim is None else _size(kdim)
    v = e if vdim is None else _size(vdim)
    if k == e and v == e:
        tensors: tuple[Tensor, ...] = (_p("in_proj_weight", 3 * e, e), *_none("q_proj_weight", "k_proj_weight",
                                                                                "v_proj_weight"))  # fmt: skip
    else:
        tensors = (_p("q_proj_weight", e, e), _p("k_proj_weight", e, k), _p("v_proj_weight", e, v),
                   *_none("in_proj_weight"))  # fmt: skip
    tensors += (_p("in_proj_bias", 3 * e) if bias else _none("in_proj_bias")[0],)
    if add_bias_kv:
        tensors += (_p("bias_k", 1, 1, e), _p("bias_v", 1, 1, e))
    return LayerTensors(frozenset({"MultiheadAttention"}), tensors, (("out_proj", _linear(e, e, bias)),))


def _rnn(name: str, gates: int) -> Callable[..., LayerTensors]:
    def tensors(input_size, hidden_size, num_layers, bias, dropout, bidirectional, proj_size=0):
        i, h, layers = _size(input_size), _size(hidden_size), _size(num_layers)
        _need(h > 0 and layers > 0 and 0 <= dropout <= 1 and not isinstance(dropout, bool))
        _need(isinstance(proj_size, int) and 0 <= proj_size < h)
        out = proj_size if proj_size > 0 else h
        directions = 2 if bidirectional else 1
        found = []
        for layer in range(layers):
            for d in range(directions):
                sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
                width = i if layer == 0 else out * directions
                found += [_p(f"weight_ih{sfx}", gates * h, width), _p(f"weight_hh{sfx}", gates * h, out)]
                if bias:
                    found += [_p(f"bias_ih{sfx}", gates * h), _p(f"bias_hh{sfx}", gates * h)]
                if proj_size > 0:
                    found.append(_p(f"weight_hr{sfx}", proj_size, h))
        return LayerTensors(frozenset({name}), tuple(found))

    if name == "RNN":

        def rnn(
            input_size,
            hidden_size,
            num_layers=1,
            nonlinearity="tanh",
            bias=True,
            batch_first=False,
            dropout=0.0,
            bidirectional=False,
        ):
            _need(nonlinearity in ("tanh", "relu"))
            return tensors(input_size, hidden_size, num_layers, bias, dropout, bidirectional)

        return rnn
    if name == "LSTM":

        def lstm(
            input_size,
            hidden_size,
            num_layers=1,
            bias=True,
            batch_first=False,
            dropout=0.0,
            bidirectional=False,
            proj_size=0,
        ):
            return tensors(input_size, hidden_size, num_layers, bias, dropout, bidirectional, proj_size)

        return lstm

    def gru(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False):
        return tensors(input_size, hidden_size, num_layers, bias, dropout, bidirectional)

    return gru


def _cell(name: str, gates: int) -> Callable[..., LayerTensors]:
    def tensors(input_size, hidden_size, bias):
        i, h = _size(input_size), _size(hidden_size)
        found = (_p("weight_ih", gates * h, i), _p("weight_hh", gates * h, h))
        found += (_p("bias_ih", gates * h), _p("bias_hh", gates * h)) if bias else _none("bias_ih", "bias_hh")
        return LayerTensors(frozenset({name}), found)

    if name == "RNNCell":

        def rnn_cell(input_size, hidden_size, bias=True, nonlinearity="tanh"):
            return tensors(input_size, hidden_size, bias)

        return rnn_cell

    def cell(input_size, hidden_size, bias=True):
        return tensors(input_size, hidden_size, bias)

    return cell


_DROPOUT = LayerTensors(frozenset({"Dropout"}))


def _transformer_layer(decoder: bool) -> Callable[..., LayerTensors]:
    name = "TransformerDecoderLayer" if decoder else "TransformerEncoderLayer"

    def layer(
        d_model,
        nhead,
        dim_feedforward=2048,
        dropout=0.1,
        activation="relu",
        layer_norm_eps=1e-05,
        batch_first=False,
        norm_first=False,
        bias=True,
    ):
        _need(activation in ("relu", "gelu"))  # a function or module cannot be written in a spec
        _dropout_p(dropout)
        attn = _mha(d_model, nhead, dropout, bias)
        norm = _layer_norm(d_model, layer_norm_eps, True, bias)
        children = [("self_attn", attn)] + ([("multihead_attn", attn)] if decoder else [])
        children += [("linear1", _linear(d_model, dim_feedforward, bias)), ("dropout", _DROPOUT),
                     ("linear2", _linear(dim_feedforward, d_model, bias))]  # fmt: skip
        n = 3 if decoder else 2
        children += [(f"norm{j}", norm) for j in range(1, n + 1)] + [(f"dropout{j}", _DROPOUT) for j in range(1, n + 1)]
        return LayerTensors(frozenset({name}), (), tuple(children))

    return layer


def _causal_self_attention(n_embd, n_head, bias=True, dropout=0.0):
    _need(isinstance(n_head, int) and n_embd > 0 and n_head > 0 and n_embd % n_head == 0 and 0.0 <= dropout < 1.0)
    children = (("c_attn", _linear(n_embd, 3 * n_embd, bias)), ("c_proj", _linear(n_embd, n_embd, bias)),
                ("resid_dropout", _DROPOUT))  # fmt: skip
    return LayerTensors(frozenset({"CausalSelfAttention"}), (), children)


def _plain(name: str, check: Callable[..., None] | None = None) -> Callable[..., LayerTensors]:
    """A layer without tensors or children, whatever its arguments (checked by ``check``)."""

    def tensors(*args: Any, **kwargs: Any) -> LayerTensors:
        if check is not None:
            check(*args, **kwargs)
        return LayerTensors(frozenset({name, *_BASES.get(name, ())}))

    return tensors


def _dropout(p=0.5, inplace=False):
    _dropout_p(p)


#: Layers that hold no tensor and no child whatever their arguments, and whose constructors
#: check nothing (or what their entry in ``_CHECKS`` checks).
PLAIN = (
    "ReLU", "ReLU6", "GELU", "SiLU", "Sigmoid", "Tanh", "Mish", "ELU", "CELU", "SELU", "LeakyReLU", "Softplus",
    "Softsign", "Tanhshrink", "Hardswish", "Hardsigmoid", "LogSigmoid", "Softmax", "LogSoftmax", "Softmin", "GLU",
    "Identity", "Flatten", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
    "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d",
)  # fmt: skip
#: the layer types a plain layer's class derives from (an init rule's ``layer: Hardtanh`` is a ReLU6's too)
_BASES = {"ReLU6": ("Hardtanh",)}
_CHECKS: dict[str, Callable[..., None]] = {
    name: _dropout for name in ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout")
}

#: layer type -> its formula
DESCRIBED: dict[str, Callable[..., LayerTensors]] = {
    "Linear": _linear,
    "Bilinear": _bilinear,
    **{f"Conv{n}d": _conv(n, False) for n in (1, 2, 3)},
    **{f"ConvTranspose{n}d": _conv(n, True) for n in (1, 2, 3)},
    "Embedding": _embedding,
    "LayerNorm": _layer_norm,
    "RMSNorm": _rms_norm,
    "GroupNorm": _group_norm,
    **{f"BatchNorm{n}d": _norm(f"BatchNorm{n}d", True) for n in (1, 2, 3)},
    **{f"InstanceNorm{n}d": _norm(f"InstanceNorm{n}d", False) for n in (1, 2, 3)},
    "SyncBatchNorm": _sync_batch_norm,
    "PReLU": _prelu,
    "MultiheadAttention": _mha,
    "RNN": _rnn("RNN", 1),
    "LSTM": _rnn("LSTM", 4),
    "GRU": _rnn("GRU", 3),
    "RNNCell": _cell("RNNCell", 1),
    "LSTMCell": _cell("LSTMCell", 4),
    "GRUCell": _cell("GRUCell", 3),
    "TransformerEncoderLayer": _transformer_layer(False),
    "TransformerDecoderLayer": _transformer_layer(True),
    "CausalSelfAttention": _causal_self_attention,
    **{name: _plain(name, _CHECKS.get(name)) for name in PLAIN},
}


def signature(name: str) -> inspect.Signature:
    """The parameters a formula takes: the constructor's (a test compares them)."""
    fn = DESCRIBED[name]
    if name in PLAIN:
        fn = _CHECKS.get(name, lambda: None)
    return inspect.signature(fn)


def describe(layer_type: str, values: dict[str, Any]) -> LayerTensors | None:
    """The tensors and children ``layer_type(**values)`` would have; None when not described
    here or when the constructor would refuse ``values`` (then build it to know)."""
    fn = DESCRIBED.get(layer_type)
    if fn is None:
        return None
    if layer_type in PLAIN and layer_type not in _CHECKS:
        return fn()
    try:
        return fn(**values)
    except (_Refused, TypeError, ValueError, ZeroDivisionError):
        return None
