"""The GPTQ checkpoint format (packing.py, quant_config.py) and the quantize CLI that writes it (quantize.py)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from m7_gptq.packing import from_checkpoint, pack_cols, pack_rows, to_checkpoint, unpack_cols, unpack_rows
from m7_gptq.quant_config import GPTQConfig, read_quant_config
from m7_gptq.quantize import main as quantize_main
from m7_gptq.quantizer import quantize_rtn
from shared.loader import ModelFormatError, load_model

PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def test_eight_codes_per_word_the_first_in_the_lowest_bits():
    codes = torch.arange(8, dtype=torch.int32)[:, None]  # input channels 0..7 of one output
    assert pack_rows(codes, 4).item() == 0x76543210
    top = torch.full((8, 1), 15, dtype=torch.int32)
    assert pack_rows(top, 4).item() == -1  # 0xFFFFFFFF read as a signed int32
    assert torch.equal(unpack_rows(pack_rows(top, 4), 4), top)  # the sign bit does not leak into the codes


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_unpack_round_trip(bits):
    values = torch.randint(0, 2**bits, (64, 48), dtype=torch.int32)
    assert pack_rows(values, bits).shape == (64 * bits // 32, 48)
    assert torch.equal(unpack_rows(pack_rows(values, bits), bits), values)
    assert pack_cols(values, bits).shape == (64, 48 * bits // 32)
    assert torch.equal(unpack_cols(pack_cols(values, bits), bits), values)
    with pytest.raises(ValueError, match="cannot be packed"):
        pack_rows(values[:5], bits)


def test_v1_stores_zero_minus_one():
    w = torch.randn(16, 64)
    sym = to_checkpoint(quantize_rtn(w, 4, 32, sym=True), GPTQConfig(group_size=32))
    assert torch.all(sym["qzeros"] == 0x77777777)  # true zero 8, stored 7 in every nibble
    q = quantize_rtn(w, 4, 32, sym=False)
    v1 = to_checkpoint(q, GPTQConfig(group_size=32, sym=False))
    v2 = to_checkpoint(q, GPTQConfig(group_size=32, sym=False, checkpoint_format="gptq_v2"))
    assert torch.equal(unpack_cols(v1["qzeros"], 4) + 1, unpack_cols(v2["qzeros"], 4))
    for stored, fmt in ((v1, "gptq"), (v2, "gptq_v2")):
        back = from_checkpoint(**stored, config=GPTQConfig(group_size=32, sym=False, checkpoint_format=fmt))
        assert torch.equal(back.dequantize(), q.dequantize())
    q.zeros[0, 0] = 0
    with pytest.raises(ValueError, match="zero point of 0"):
        to_checkpoint(q, GPTQConfig(group_size=32, sym=False))


def test_layout_shapes_and_dtypes():
    stored = to_checkpoint(quantize_rtn(torch.randn(48, 256), 4, 128, True), GPTQConfig())
    assert {k: (tuple(v.shape), v.dtype) for k, v in stored.items()} == {
        "qweight": ((32, 48), torch.int32), "qzeros": ((2, 6), torch.int32),
        "scales": ((2, 48), torch.float16), "g_idx": ((256,), torch.int32)}


@pytest.mark.parametrize(("cfg", "message"), [
    ({"quant_method": "awq", "bits": 4, "group_size": 128}, "quant_method 'awq'"),
    ({"bits": 3, "group_size": 128}, "bits must be one of"),
    ({"bits": 4, "group_size": 48}, "group_size must be one of"),
    ({"bits": 4}, "no 'group_size'"),
    ({"bits": 4, "group_size": 128, "lm_head": True}, "lm_head"),
    ({"bits": 4, "group_size": 128, "desc_act": "yes"}, "desc_act must be true or false"),
    ({"bits": 4, "group_size": 128, "checkpoint_format": "marlin"}, "checkpoint_format"),
    ({"bits": 4, "group_size": 128, "damp_percent": 2}, "damp_percent"),
])
def test_bad_quantization_configs_are_named(tmp_path, cfg, message):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3", "quantization_config": cfg}))
    with pytest.raises(ModelFormatError, match=message) as err:
        read_quant_config(tmp_path)
    assert "config.json" in str(err.value)


def test_config_sources(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    assert read_quant_config(tmp_path) is None
    (tmp_path / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 64, "desc_act": True}))
    assert read_quant_config(tmp_path) == GPTQConfig(group_size=64, desc_act=True)  # AutoGPTQ's separate file
    cfg = GPTQConfig(group_size=32, sym=False).to_hf_dict()
    assert cfg["quant_method"] == "gptq" and cfg["checkpoint_format"] == "gptq"
    assert GPTQConfig.from_hf_dict(cfg) == GPTQConfig(group_size=32, sym=False)


def test_cli_writes_a_standard_gptq_checkpoint(act_order_dir):
    config = json.loads(Path(act_order_dir, "config.json").read_text())
    q = config["quantization_config"]
    assert (q["quant_method"], q["bits"], q["group_size"], q["desc_act"], q["sym"]) == ("gptq", 4, 32, True, False)
    assert config["model_type"] == "qwen3" and config["hidden_size"] == 256  # the rest of config.json as it was
    with safe_open(f"{act_order_dir}/model.safetensors", framework="pt") as f:
        names = set(f.keys())
        for p in PROJECTIONS:
            assert f"model.layers.0.{p}.weight" not in names
            assert f.get_tensor(f"model.layers.0.{p}.qweight").dtype == torch.int32
            assert f.get_tensor(f"model.layers.0.{p}.scales").dtype == torch.float16
        assert f.get_slice("model.layers.0.mlp.down_proj.qweight").get_shape() == [768 // 8, 256]
        assert f.get_slice("model.layers.0.mlp.down_proj.qzeros").get_shape() == [768 // 32, 256 // 8]
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16  # as the source stored it
        g_idx = f.get_tensor("model.layers.0.self_attn.q_proj.g_idx").long()
    assert torch.equal(torch.bincount(g_idx), torch.full((8,), 32)) and not torch.equal(g_idx, torch.arange(256) // 32)
    # embeddings and the final norm (the lm_head is tied), then per layer 4 norms and 7 projections of 4 tensors
    assert len(names) == 2 + 4 * (4 + 7 * 4)
    report = json.loads(Path(act_order_dir, "quantization_report.json").read_text())
    assert report["calibration"]["num_samples"] == 8 and len(report["layers"]) == 28
    assert all(layer["error"] < layer["rtn_error"] for layer in report["layers"])  # GPTQ beats RTN on every layer
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "quantize_config.json"):
        assert Path(act_order_dir, name).read_text()


def test_cli_user_mistakes_are_one_line(gptq_dir, tmp_path, capsys):
    cases = [
        (["--out", gptq_dir], "already holds a model"),
        (["--out", str(tmp_path / "a"), "--group-size", "48"], "group_size must be one of"),
        (["--out", str(tmp_path / "b"), "--bits", "3"], "bits must be one of"),
        (["--out", str(tmp_path / "c"), "--num-samples", "0"], "--num-samples must be >= 1"),
        (["--out", str(tmp_path / "c"), "--threads", "0"], "--threads must be an integer >= 1"),
        (["--out", str(tmp_path / "d"), "--calibration", str(tmp_path / "missing.txt")], "cannot be read"),
        (["--out", str(tmp_path / "e"), "--model", "no-such-model"], "unknown model"),
        (["--out", str(tmp_path / "f"), "--model", gptq_dir], "GPTQ-quantized checkpoint"),
    ]
    for argv, message in cases:
        assert quantize_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1, err
    small = tmp_path / "small.txt"
    small.write_text("x = 1\n")
    assert quantize_main(["--out", str(tmp_path / "g"), "--calibration", str(small), "--num-samples", "2"]) == 2
    assert "calibration text has" in capsys.readouterr().err


def test_rtn_needs_no_calibration_and_overwrite_replaces(tmp_path, capsys):
    out = tmp_path / "rtn"
    assert quantize_main(["--out", str(out), "--method", "rtn", "--group-size", "-1"]) == 0
    report = json.loads((out / "quantization_report.json").read_text())
    assert report["calibration"]["num_samples"] == 0 and report["layers"][0]["error"] is None
    assert quantize_main(["--out", str(out), "--method", "rtn", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["quantization_config"]["group_size"] == 128
    assert "python -m m7_gptq --model" in capsys.readouterr().out


def test_earlier_milestones_refuse_a_gptq_checkpoint_by_name(gptq_dir, tmp_path):
    with pytest.raises(ModelFormatError, match=r"GPTQ-quantized checkpoint.*m7_gptq"):
        load_model(gptq_dir, torch.float32, "cpu")
    autogptq = tmp_path / "autogptq"  # AutoGPTQ kept the settings in quantize_config.json only
    shutil.copytree(gptq_dir, autogptq)
    config = json.loads((autogptq / "config.json").read_text())
    del config["quantization_config"]
    (autogptq / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="GPTQ-quantized"):
        load_model(str(autogptq), torch.float32, "cpu")
    r = subprocess.run([sys.executable, "-m", "m6_prefix", "--model", gptq_dir, "--max-tokens", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "m7_gptq" in r.stderr and "Traceback" not in r.stderr
