"""buf.gen.yaml: the stubs for other languages. The TypeScript ones (Protobuf-ES, whose plugin
comes from npm) are generated, type-checked, and shown to speak the same wire format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from tests.clients.node import NODE_DIR, ensure_node_modules, run_tsc

REPO_ROOT = NODE_DIR.parent.parent
BUF = Path(sys.executable).parent / "buf"

CHECK = """\
import { fromJson, toBinary } from "@bufbuild/protobuf";
import { RunRequestSchema, WorkflowHostAPI } from "./ts/okra/workflow/v1/workflow_pb";

const request = fromJson(RunRequestSchema, JSON.parse(process.argv[2]));
console.log(JSON.stringify({
  runRequest: Buffer.from(toBinary(RunRequestSchema, request)).toString("hex"),
  service: WorkflowHostAPI.typeName,
  methods: Object.values(WorkflowHostAPI.method).map((m) => m.name),
}));
"""
RUN_REQUEST = {
    "workflowId": "examples.approval.1.0.0",
    "input": {"requester": "ada", "amount": 120, "tags": ["a", None, True]},
    "correlationId": "expense-7",
    "tags": {"team": "web"},
    "requestId": "r-1",
}


def template() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO_ROOT / "buf.gen.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_template_names_go_typescript_and_java() -> None:
    plugins = template()["plugins"]
    names = {p.get("local") or p.get("protoc_builtin") for p in plugins}
    assert names == {
        "protoc-gen-go",
        "protoc-gen-go-grpc",
        "clients/node/node_modules/.bin/protoc-gen-es",
        "java",
        "protoc-gen-grpc-java",
    }
    assert all(p["out"].startswith("clients/gen/") for p in plugins)
    assert "clients/gen/" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_typescript_stubs_generate_type_check_and_encode_like_python(tmp_path: Path) -> None:
    node = ensure_node_modules()
    only_ts = template()
    only_ts["plugins"] = [
        {**p, "out": str(tmp_path / "ts")}
        for p in only_ts["plugins"]
        if str(p.get("local", "")).startswith("clients/node/")
    ]
    (tmp_path / "buf.gen.yaml").write_text(yaml.safe_dump(only_ts))
    generated = subprocess.run(
        [str(BUF), "generate", "--template", str(tmp_path / "buf.gen.yaml")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert generated.returncode == 0, generated.stderr
    stubs = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*_pb.ts"))
    assert "ts/okra/workflow/v1/workflow_pb.ts" in stubs
    # The generated code imports @bufbuild/protobuf, which lives in clients/node.
    os.symlink(NODE_DIR / "node_modules", tmp_path / "node_modules")
    (tmp_path / "check.ts").write_text(CHECK)
    options = ["--strict", "--target", "ES2022", "--module", "nodenext"]
    options += ["--moduleResolution", "nodenext", "--skipLibCheck", "--outDir", "out"]
    options += ["--types", "node", "--typeRoots", str(NODE_DIR / "node_modules" / "@types")]
    compiled = run_tsc(node, *options, "check.ts", *stubs, cwd=tmp_path)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    ran = subprocess.run(
        [node.node, str(tmp_path / "out" / "check.js"), json.dumps(RUN_REQUEST)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    service = pb.DESCRIPTOR.services_by_name["WorkflowHostAPI"]
    assert report["service"] == service.full_name
    assert report["methods"] == [m.name for m in service.methods]
    # Bytes from TypeScript decode in Python to the same request.
    decoded = pb.RunRequest.FromString(bytes.fromhex(report["runRequest"]))
    assert decoded == json_format.ParseDict(RUN_REQUEST, pb.RunRequest())
