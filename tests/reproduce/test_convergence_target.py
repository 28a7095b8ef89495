"""`iobs reproduce convergence`: the CLI writes the plot, the JSON and the table; I-OBS's exponent is 2."""

import json

from iobs.cli import main


def test_convergence_target_smoke(tmp_path):
    out = tmp_path / "conv"
    assert (
        main(
            [
                "reproduce",
                "convergence",
                "--out",
                str(out),
                "--n",
                "300",
                "--d",
                "20",
                "--k",
                "2",
                "--max-iter",
                "15",
            ]
        )
        == 0
    )
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "convergence.json").read_text())
    assert data["config"]["n"] == 300 and set(data["curves"]) >= {"iobs", "kiht"}
    assert data["exponents"]["iobs"] and min(data["exponents"]["iobs"]) > 1.8
    assert "| iobs |" in (out / "convergence.md").read_text()


def test_convergence_config_rejects_n_below_d(tmp_path, capfd):
    assert main(["reproduce", "convergence", "--out", str(tmp_path), "--n", "10", "--d", "20"]) == 2
    assert "n must be an integer in [20, " in capfd.readouterr().err
