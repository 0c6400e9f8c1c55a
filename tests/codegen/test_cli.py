"""`okra-sidecar codegen` on the command line: arguments, output and refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from okra_sidecar.cli import main as cli_main
from tests.codegen.support import WORKFLOWS_DIR


def test_writes_each_module_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ts"
    code = cli_main(
        ["codegen", "--lang", "typescript", "--workflows", str(WORKFLOWS_DIR), "--out", str(out)]
    )
    assert code == 0
    written = sorted(line.removeprefix("wrote ") for line in capsys.readouterr().out.splitlines())
    assert written == sorted(str(p) for p in out.iterdir())
    assert {p.name for p in out.iterdir()} == {
        "_runtime.ts",
        "shop_checkout_v2_1_0.ts",
        "shop_ping_v1_0_0.ts",
        "shop_refund_v1_0_0.ts",
    }


def test_unknown_language_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        cli_main(
            [
                "codegen",
                "--lang",
                "cobol",
                "--workflows",
                str(WORKFLOWS_DIR),
                "--out",
                str(tmp_path),
            ]
        )
    assert caught.value.code == 2


def test_external_ref_is_refused_with_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    (workflows / "bad.yaml").write_text(
        (WORKFLOWS_DIR / "ping.yaml")
        .read_text()
        .replace(
            "do:",
            "input:\n  schema:\n    format: json\n    document:\n      type: object\n"
            "      properties:\n        who: {$ref: 'https://example.com/person.json'}\ndo:",
        )
    )
    code = cli_main(
        [
            "codegen",
            "--lang",
            "python",
            "--workflows",
            str(workflows),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    error = capsys.readouterr().err
    assert "shop.ping.1.0.0" in error and "/properties/who" in error
    assert "points outside the document" in error


def test_broken_definitions_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(
        [
            "codegen",
            "--lang",
            "python",
            "--workflows",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 1
    assert "none: cannot be read: No such file or directory" in capsys.readouterr().err


def test_two_workflows_with_one_module_name_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # shop + a-b and shop-a + b are both shop_a_b_v1_0_0: the second module overwrote the first.
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    ping = (WORKFLOWS_DIR / "ping.yaml").read_text()
    assert "namespace: shop\n" in ping and "name: ping\n" in ping
    (workflows / "one.yaml").write_text(ping.replace("name: ping\n", "name: a-b\n"))
    (workflows / "two.yaml").write_text(
        ping.replace("namespace: shop\n", "namespace: shop-a\n").replace(
            "name: ping\n", "name: b\n"
        )
    )
    out = tmp_path / "out"
    code = cli_main(
        ["codegen", "--lang", "python", "--workflows", str(workflows), "--out", str(out)]
    )
    assert code == 1
    error = capsys.readouterr().err
    assert "shop-a.b.1.0.0 and shop.a-b.1.0.0 would both be shop_a_b_v1_0_0.py" in error
    assert not out.exists()


def test_a_workflow_name_starting_with_a_digit_gives_valid_names(tmp_path: Path) -> None:
    # `2fa-check` gave `def 2fa_check_handle(` and a TypeScript function named as its class.
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    ping = (WORKFLOWS_DIR / "ping.yaml").read_text()
    (workflows / "2fa.yaml").write_text(ping.replace("name: ping\n", "name: 2fa-check\n"))
    for lang in ("python", "typescript"):
        out = tmp_path / lang
        args = ["codegen", "--lang", lang, "--workflows", str(workflows), "--out", str(out)]
        assert cli_main(args) == 0
    python = (tmp_path / "python" / "shop_2fa_check_v1_0_0.py").read_text()
    compile(python, "shop_2fa_check_v1_0_0.py", "exec")
    assert "def handle_2fa_check(" in python and "async def run_2fa_check(" in python
    typescript = (tmp_path / "typescript" / "shop_2fa_check_v1_0_0.ts").read_text()
    declared = re.findall(r"^export (?:async )?(?:function|class) (\w+)", typescript, re.M)
    assert sorted(declared) == [
        "_2faCheckHandle",
        "handle2faCheck",
        "run_2faCheck",
        "start_2faCheck",
    ]
