"""`cogvlm serve` and `cogvlm web` load the model as their flags say: `--quant` quantizes its linears."""

from __future__ import annotations

import pytest

from cogvlm import cli
from cogvlm.cli.serving import run_on_every_rank
from cogvlm.nn.quantized import QuantizedProjection
from tests.golden import golden_dir


@pytest.mark.parametrize("command", ["serve", "web"])
@pytest.mark.parametrize("bits", [None, 4, 8])
def test_quant_flag_quantizes_the_served_model(command, bits):
    argv = [command, "--from_pretrained", str(golden_dir() / "cogvlm" / "sat_checkpoint")]
    argv += ["--local_tokenizer", str(golden_dir() / "tokenizer.model")]
    argv += [] if bits is None else ["--quant", str(bits)]
    loaded = []
    run_on_every_rank(
        cli.build_parser().parse_args(argv), lambda session, runtime: loaded.append((session, runtime))
    )
    ((session, runtime),) = loaded
    assert not runtime.tp.is_parallel  # no torchrun: one process holds the whole model
    quantized = [m for m in session.model.modules() if isinstance(m, QuantizedProjection)]
    if bits is None:
        assert quantized == []
    else:
        assert quantized and {layer.bits for layer in quantized} == {bits}
