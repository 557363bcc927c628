"""Inference runtimes: one swap point for "a batch of tiles -> probabilities".

Tiling, test-time views and fusion (:mod:`spacenet7.models.inference`, :mod:`spacenet7.predict`)
are shared by every engine; an engine only turns a (B, 3, h, w) float batch in [0, 1] into
(B, C, h, w) float32 sigmoid probabilities:

- :class:`TorchRuntime`: the network itself, eager, with bf16 autocast and channels-last where
  the hardware runs bf16 natively (the default, as before);
- :class:`OnnxRuntime`: an ONNX file (``spacenet7 compile format=onnx``) in ONNX Runtime;
- :class:`OpenVinoRuntime`: an OpenVINO IR (``format=openvino``) or an ONNX file in OpenVINO,
  fp32 or, where the CPU runs it natively, bf16.

Exported model files carry the metadata prediction needs (:class:`ModelMeta`): the training
upscale, the input bands and scaling, the output classes and the tile alignment (the encoder's
stride; inputs are padded to a multiple of it). The ONNX, OpenVINO and NNCF (int8 for OpenVINO)
packages are the ``spacenet7[fast]`` extra; a missing one is a one-line error naming it.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from spacenet7.config import FAST_EXTRA, Engine, ModelFormat, OverflowFix
from spacenet7.data.bands import InputSpec
from spacenet7.data.targets import CHANNELS
from spacenet7.errors import SN7DataError, SN7Error

META_KEY = "spacenet7"  # ONNX metadata_props key / OpenVINO rt_info key holding ModelMeta as JSON
META_FORMAT = "spacenet7-model/1"
INPUT_NAME, OUTPUT_NAME = "image", "prob"
# OverflowFix -> nncf.OverflowFix's value (nncf is imported only in the quantizing process)
NNCF_OVERFLOW_FIX = {OverflowFix.disable: "disable", OverflowFix.first_layer: "first_layer_only", OverflowFix.enable: "enable"}


class Runtime(Protocol):
    """Runs the network on a batch of tiles."""

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) float32 in [0, 1], h and w multiples of the stride -> (B, C, h, w) float32 probabilities."""
        ...


class TorchRuntime:
    """Eager PyTorch, channels-last, with autocast to ``amp_dtype`` when given (bit-identical to the old path)."""

    def __init__(self, net: torch.nn.Module, device: torch.device, amp_dtype: torch.dtype | None) -> None:
        self.net, self.device, self.amp_dtype = net, device, amp_dtype

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities of a batch (on the model's device)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            return self.net(batch.contiguous(memory_format=torch.channels_last)).float().sigmoid()


class OnnxRuntime:
    """An ONNX file in ONNX Runtime (CPU; ``device=cuda`` picks the CUDA provider when installed: untested)."""

    def __init__(self, path: Path, threads: int = 0, device: str = "cpu") -> None:
        ort = require("onnxruntime", "onnxruntime")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise SN7Error("predict: device=cuda with engine=onnxruntime needs onnxruntime-gpu (CUDAExecutionProvider)")
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
            raise SN7DataError(
                path,
                f"the model's input(s) {inputs} and output(s) {outputs} are not the {INPUT_NAME!r} -> {OUTPUT_NAME!r} "
                "that spacenet7 runs; export it with `spacenet7 compile checkpoint=...`",
            )
        check_channels(path, next((o.shape for o in self.session.get_outputs() if o.name == OUTPUT_NAME), None))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities of a batch (on the CPU)."""
        x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])


def check_channels(path: Path, shape: Any) -> None:
    """Refuse a model file whose output (its declared ``shape``, ``[batch, C, h, w]``) does not have one
    channel per class this version predicts (:data:`CHANNELS`); a symbolic or unknown count passes here
    (:func:`spacenet7.models.inference.predict_batch` checks the first real output).

    Raises:
        SN7DataError: naming the file, the channels it outputs and those expected.
    """
    channels = shape[1] if shape is not None and len(shape) == 4 else None
    if isinstance(channels, int) and channels != len(CHANNELS):
        raise SN7DataError(
            path,
            f"the model outputs {channels} channel(s) but its metadata lists {len(CHANNELS)} classes {list(CHANNELS)}; "
            "export it with `spacenet7 compile checkpoint=...`",
        )


class OpenVinoRuntime:
    """An OpenVINO IR or ONNX file compiled for the CPU, in fp32 or bf16 (``INFERENCE_PRECISION_HINT``).

    It is compiled for throughput (``PERFORMANCE_HINT=THROUGHPUT``): OpenVINO picks a number of
    streams for the cores it may use, and each batch of tiles is split into that many parts run
    concurrently (``AsyncInferQueue``), then put back in order. On 2 cores that is 2 streams: 183
    against 175 tiles/s for one latency-compiled request in bf16, 1.05x (``bench/bench_runtimes.py``).
    """

    def __init__(self, path: Path, threads: int = 0, bf16: bool = False, throughput: bool = True) -> None:
        ov = require("openvino", "openvino")
        core = ov.Core()
        hint = "THROUGHPUT" if throughput else "LATENCY"  # LATENCY: one request on all cores (the bench's baseline)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "PERFORMANCE_HINT": hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.streams = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.queue = ov.AsyncInferQueue(self.compiled, self.streams)
        self.precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities of a batch (on the CPU), its parts run on the streams at once."""
        x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        parts = np.array_split(np.arange(len(x)), min(self.streams, len(x)))
        out: dict[int, np.ndarray] = {}
        self.queue.set_callback(
            lambda request, k: out.__setitem__(k, np.array(request.get_output_tensor(0).data, dtype=np.float32))
        )
        for k, idx in enumerate(parts):
            self.queue.start_async({0: np.ascontiguousarray(x[idx[0] : idx[-1] + 1])}, k)
        self.queue.wait_all()
        return torch.from_numpy(np.concatenate([out[k] for k in range(len(parts))]))


def require(module: str, package: str) -> Any:
    """Import ``module``, or raise one line naming the package and the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise SN7Error(f"the {package} package is not installed: {FAST_EXTRA}") from None


@dataclass
class ModelMeta:
    """What an exported model file must carry for ``predict`` to reproduce training.

    Attributes:
        upscale: the training grid's scale over the mosaics'.
        input: the input bands and scaling (:class:`InputSpec` as a dict).
        classes: the output channels, in order.
        stride: tile alignment: input height and width must be multiples of it (predict pads).
        in_channels: input channels of the network.
        model: the network config it was built from.
        source: the checkpoint it was exported from.
        int8_overflow_fix: for an NNCF int8 IR, its :class:`OverflowFix` (``disable``: full 8-bit
            weights, for CPUs with VNNI or AMX); empty for a float model.
        runtime: the engine this file is meant for, as ``compile`` chose it: a candidate map of
            :mod:`spacenet7.models.engine_choice` (engine, precision, amp, measured tiles/s and truth
            parity); ``predict engine=auto`` reads it. Empty in files of older versions.
    """

    upscale: float
    input: dict[str, Any]
    classes: list[str]
    stride: int
    in_channels: int = 3
    model: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    int8_overflow_fix: str = ""
    runtime: dict[str, Any] = field(default_factory=dict)
    format: str = META_FORMAT

    def to_json(self) -> str:
        """The metadata as the JSON string stored in the model file."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, path: Path) -> ModelMeta:
        """Parse and check the stored metadata.

        Raises:
            SN7DataError: not JSON, another format, a missing key or a value prediction cannot use.
        """
        try:
            doc = json.loads(text)
            if doc.get("format") != META_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {META_FORMAT!r}")
            meta = cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})
            InputSpec.from_dict(meta.input)
            if meta.runtime:
                from spacenet7.models.engine_choice import check_candidate

                check_candidate(meta.runtime)
        except (ValueError, TypeError, KeyError, AttributeError, SN7Error) as exc:
            raise SN7DataError(path, f"bad spacenet7 metadata in the model file ({str(exc).splitlines()[0][:160]})") from None
        if not (meta.upscale > 0 and int(meta.stride) >= 1 and list(meta.classes) == list(CHANNELS)):
            raise SN7DataError(
                path,
                f"bad spacenet7 metadata in the model file (upscale {meta.upscale}, stride {meta.stride}, "
                f"classes {meta.classes}; this version predicts {list(CHANNELS)})",
            )
        return meta


def net_stride(net: torch.nn.Module) -> int:
    """The network's input alignment: its encoder's output stride (1 when it has none)."""
    return int(getattr(getattr(net, "encoder", None), "output_stride", 1) or 1)


class _Probabilities(torch.nn.Module):
    """The network with its sigmoid, as exported."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid probabilities of the logits."""
        return self.net(x).sigmoid()


def export_onnx(net: torch.nn.Module, meta: ModelMeta, out: Path, tile: int = 256, opset: int = 17) -> Path:
    """Write ``net`` (fp32, with its sigmoid) as ONNX with dynamic batch, height and width, ``meta`` in its metadata.

    Args:
        net: the network (a copy is exported; ``net`` is left as it is).
        meta: stored under ``metadata_props[spacenet7]``.
        out: the ``.onnx`` file (written directly; callers make it atomic).
        tile: the side of the example input traced (rounded up to the stride).
        opset: ONNX opset (>= 17).
    """
    onnx = require("onnx", "onnx")
    side = -(-tile // meta.stride) * meta.stride
    example = torch.rand(1, meta.in_channels, side, side)
    wrapped = _Probabilities(copy.deepcopy(net).float().to(memory_format=torch.contiguous_format)).eval()  # net untouched
    dims = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        wrapped,
        (example,),
        str(out),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_axes={INPUT_NAME: dims, OUTPUT_NAME: dims},
        dynamo=False,
    )
    model = onnx.load(str(out))
    onnx.helper.set_model_props(model, {META_KEY: meta.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def quantize_int8(onnx_in: Path, onnx_out: Path, tiles: list[np.ndarray]) -> Path:
    """Static int8 quantization (QDQ: per-channel int8 weights, uint8 activations) calibrated on ``tiles``.

    ONNX Runtime's quantizer writes the QDQ graph (``compile format=onnx int8=true``); OpenVINO IRs are
    quantized with NNCF instead (:func:`quantize_openvino_int8`).

    Args:
        onnx_in: the fp32 export.
        onnx_out: the quantized ``.onnx``.
        tiles: calibration inputs, each (1, 3, h, w) float32 in [0, 1].
    """
    require("onnxruntime", "onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Tiles(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(tiles)

        def get_next(self) -> dict[str, np.ndarray] | None:
            t = next(self.it, None)
            return None if t is None else {INPUT_NAME: t}

    quantize_static(
        str(onnx_in),
        str(onnx_out),
        Tiles(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    onnx = require("onnx", "onnx")
    model = onnx.load(str(onnx_out))  # the quantizer drops metadata_props: put them back
    props = {p.key: p.value for p in onnx.load(str(onnx_in), load_external_data=False).metadata_props}
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(onnx_out))
    return onnx_out


def quantize_openvino_int8(
    xml_in: Path,
    xml_out: Path,
    meta: ModelMeta,
    tiles: list[np.ndarray],
    *,
    max_drop: float | None = None,
    validate: Callable[[Any, Iterable[np.ndarray]], Any] | None = None,
    overflow_fix: OverflowFix = OverflowFix.first_layer,
    max_iterations: int | None = None,
) -> Path:
    """Static int8 quantization of an OpenVINO IR with NNCF, calibrated on ``tiles``.

    NNCF's ``MIXED`` preset (symmetric int8 weights, asymmetric activations) with its full bias
    correction: on unet_small (the earlier real recipe's network) its footprints agree better with fp32
    than ONNX Runtime's QDQ quantizer's (F1 0.970 against 0.947, ``bench/bench_runtimes.py``).

    Args:
        xml_in: the fp32 IR.
        xml_out: the quantized IR (``.xml`` + ``.bin``; written directly, callers make it atomic).
        meta: stored again in its rt_info.
        tiles: calibration inputs, each (1, 3, h, w) float32 in [0, 1].
        max_drop: accuracy control (``nncf.quantize_with_accuracy_control``): layers go back to
            floating point, most sensitive first, until ``validate`` of the int8 model is within
            ``max_drop`` (absolute) of the float model's, both run in fp32 (with bf16 inference the float
            layers differ as bf16 does). None: every layer int8.
        validate: ``(compiled model, tiles) -> score``, higher is better; needed with ``max_drop``. It is pickled to the quantizing process (a module-level class, not a closure).
        overflow_fix: which weights get 7 bits against CPUs without VNNI (:class:`OverflowFix`;
            ``auto`` is resolved by the caller).
        max_iterations: with ``max_drop``, put back at most this many layer groups (each re-ranks the
            rest: ~45 s on the make-real network); the best model found by then is kept. None: no cap.
    """
    require("nncf", "nncf")
    # NNCF installs hooks into torch when it quantizes (nncf.torch, even for an OpenVINO model); a torch
    # training later in the same process then crashed (SIGSEGV). It therefore runs in a spawned process,
    # one that ends with this one: a killed compile or bench must not leave it quantizing at full CPU.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),)
    ) as pool:
        pool.submit(
            _quantize_openvino_int8, xml_in, xml_out, meta.to_json(), tiles, max_drop, validate, overflow_fix, max_iterations
        ).result()
    return xml_out


def die_with_parent(parent: int) -> None:
    """Worker initializer: this process gets SIGKILL when ``parent`` (the process that spawned it) dies,
    however it dies (Linux ``PR_SET_PDEATHSIG``; elsewhere a no-op). A parent already gone exits it at once."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _quantize_openvino_int8(
    xml_in: Path,
    xml_out: Path,
    meta_json: str,
    tiles: list[np.ndarray],
    max_drop: float | None,
    validate: Callable[[Any, Iterable[np.ndarray]], Any] | None,
    overflow_fix: OverflowFix,
    max_iterations: int | None,
) -> None:
    """:func:`quantize_openvino_int8`'s work, in its own process."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters, AdvancedQuantizationParameters

    nncf.set_log_level(logging.WARNING)  # its per-layer INFO lines; compile prints what came out (int8_convolutions)
    model = ov.Core().read_model(str(xml_in))
    data = nncf.Dataset(tiles)
    common: dict[str, Any] = {
        "subset_size": len(tiles),
        "preset": nncf.QuantizationPreset.MIXED,
        "fast_bias_correction": False,
    }
    advanced = AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix(NNCF_OVERFLOW_FIX[overflow_fix]))
    if max_drop is None:
        quantized = nncf.quantize(model, data, advanced_parameters=advanced, **common)
    else:
        assert validate is not None, "max_drop needs validate"
        quantized = nncf.quantize_with_accuracy_control(
            model,
            data,
            data,
            validate,
            max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            advanced_quantization_parameters=advanced,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                max_num_iterations=sys.maxsize if max_iterations is None else max_iterations
            ),
            **common,
        )
    quantized.set_rt_info(meta_json, [META_KEY])
    ov.save_model(quantized, str(xml_out), compress_to_fp16=False)


def int8_convolutions(xml: Path) -> tuple[int, int]:
    """(int8, all) convolutions of an OpenVINO IR: those whose input is quantized (a FakeQuantize) count as int8."""
    ov = require("openvino", "openvino")
    convs = [op for op in ov.Core().read_model(str(xml)).get_ordered_ops() if op.get_type_name() == "Convolution"]

    def quantized(op: Any) -> bool:
        src = op.input_value(0).get_node()
        while src.get_type_name() in ("Convert", "Subtract", "Multiply") and src.get_input_size():  # dequantization steps
            src = src.input_value(0).get_node()
        return bool(src.get_type_name() == "FakeQuantize")

    return sum(quantized(op) for op in convs), len(convs)


def onnx_to_openvino(onnx_path: Path, meta: ModelMeta, out_xml: Path) -> Path:
    """Convert an ONNX file to an OpenVINO IR (``out_xml`` + its ``.bin``, fp32 weights) with ``meta`` in rt_info."""
    ov = require("openvino", "openvino")
    model = ov.convert_model(str(onnx_path))
    model.set_rt_info(meta.to_json(), [META_KEY])
    ov.save_model(model, str(out_xml), compress_to_fp16=False)
    return out_xml


def read_meta(path: str | Path) -> ModelMeta:
    """The :class:`ModelMeta` stored in an exported ``.onnx`` or OpenVINO ``.xml`` file.

    Raises:
        SN7DataError: missing file, unreadable, or without (valid) spacenet7 metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise SN7DataError(path, "model file not found")
    if path.suffix == ".onnx":
        onnx = require("onnx", "onnx")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise SN7DataError(path, f"not a readable ONNX file ({str(exc).splitlines()[0][:120]})") from None
        props = {p.key: p.value for p in model.metadata_props}
        text = props.get(META_KEY)
    elif path.suffix == ".xml":
        ov = require("openvino", "openvino")
        try:
            model = ov.Core().read_model(str(path))
        except Exception as exc:
            raise SN7DataError(path, f"not a readable OpenVINO IR ({str(exc).splitlines()[0][:120]})") from None
        text = model.get_rt_info([META_KEY]).astype(str) if model.has_rt_info([META_KEY]) else None
    else:
        raise SN7DataError(path, "model_file must be an .onnx file or an OpenVINO .xml (spacenet7 compile writes them)")
    if not text:
        raise SN7DataError(
            path,
            "the model file has no spacenet7 metadata (upscale, input bands); export it with `spacenet7 compile checkpoint=...`",
        )
    return ModelMeta.from_json(text, path)


def make_runtime(engine: Engine, model_file: str | Path, *, threads: int = 0, bf16: bool = False, device: str = "cpu") -> Runtime:
    """The runtime for an exported model file (``engine`` other than torch)."""
    path = Path(model_file)
    if engine is Engine.onnxruntime:
        if path.suffix != ".onnx":
            raise SN7DataError(path, "engine=onnxruntime runs .onnx files (spacenet7 compile format=onnx)")
        return OnnxRuntime(path, threads, device)
    if engine is Engine.openvino:
        if device.startswith("cuda"):
            raise SN7Error("predict: engine=openvino runs on the CPU here; use device=cpu (or auto)")
        return OpenVinoRuntime(path, threads, bf16)
    raise SN7Error(f"predict: engine={engine} does not run model files")


def write_model_files(
    net: torch.nn.Module,
    meta: ModelMeta,
    fmt: ModelFormat,
    out: Path,
    tile: int = 256,
    opset: int = 17,
    int8_tiles: list[np.ndarray] | None = None,
    int8_max_drop: float | None = None,
    int8_validate: Callable[[Any, Iterable[np.ndarray]], Any] | None = None,
    int8_overflow_fix: OverflowFix = OverflowFix.first_layer,
    int8_max_iterations: int | None = None,
) -> list[Path]:
    """Export to ``out`` (``.onnx``, or ``.xml`` + ``.bin``) atomically: nothing is left at ``out`` on failure.

    ``int8_tiles``: quantize to int8, calibrated on these tiles: ONNX Runtime's QDQ quantizer for
    ``.onnx`` (:func:`quantize_int8`), NNCF for OpenVINO (:func:`quantize_openvino_int8`, which
    alone takes ``int8_max_drop``, ``int8_validate``, ``int8_overflow_fix`` and ``int8_max_iterations``).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".partial", dir=out.parent) as tmp:
        onnx_path = export_onnx(net, meta, Path(tmp) / "model.onnx", tile, opset)
        if fmt is ModelFormat.onnx:
            if int8_tiles:
                onnx_path = quantize_int8(onnx_path, Path(tmp) / "int8.onnx", int8_tiles)
            onnx_path.replace(out)
            return [out]
        xml = onnx_to_openvino(onnx_path, meta, Path(tmp) / "model.xml")
        if int8_tiles:
            xml = quantize_openvino_int8(
                xml,
                Path(tmp) / "int8.xml",
                meta,
                int8_tiles,
                max_drop=int8_max_drop,
                validate=int8_validate,
                overflow_fix=int8_overflow_fix,
                max_iterations=int8_max_iterations,
            )
        binary = out.with_suffix(".bin")
        xml.with_suffix(".bin").replace(binary)  # the weights first: an .xml never points at a missing .bin
        xml.replace(out)
        return [out, binary]
