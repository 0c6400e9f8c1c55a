"""buf.gen.yaml's Go and Java stubs: generated with Debian's plugins and compiled.

The toolchains come from Debian packages (.ci/run installs them): golang-go with the protobuf
and gRPC modules of golang-google-protobuf-dev and golang-google-grpc-dev (built in GOPATH
mode, no module download), protoc-gen-go and protoc-gen-go-grpc; a JDK, protoc for buf's
built-in Java generator, Debian's grpc-java plugin (installed as grpc_java_plugin, so the
test puts it on PATH under the name buf.gen.yaml uses) and the protobuf and grpc-java jars.
Without them the tests skip, saying what is missing; in CI (CI=true) they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from okra_client.gen.workflow.v1 import workflow_pb2 as pb

from tests.clients.test_stubs import BUF, REPO_ROOT, RUN_REQUEST, template

GO_PACKAGE = "okra.dev/sidecar/gen/go"
GO_MODULES = Path("/usr/share/gocode")
JAVA_DIR = Path("/usr/share/java")
JARS = [
    "protobuf",
    "grpc-api",
    "grpc-stub",
    "grpc-protobuf",
    "grpc-protobuf-lite",
    "guava",
    "geronimo-annotation-1.3-spec",
]
BUILD_TIMEOUT_S = 300
# Encodes RUN_REQUEST (JSON in argv[1]) with the Go stubs; prints the bytes as hex.
GO_CHECK = """\
package main

import (
\t"encoding/hex"
\t"fmt"
\t"os"

\t"google.golang.org/protobuf/encoding/protojson"
\t"google.golang.org/protobuf/proto"

\tworkflowv1 "okra.dev/sidecar/gen/go/okra/workflow/v1"
)

func main() {
\tvar request workflowv1.RunRequest
\tif err := protojson.Unmarshal([]byte(os.Args[1]), &request); err != nil {
\t\tpanic(err)
\t}
\traw, err := proto.Marshal(&request)
\tif err != nil {
\t\tpanic(err)
\t}
\tfmt.Println(hex.EncodeToString(raw))
}
"""


def require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    missing += [
        f"{JAVA_DIR}/{jar}.jar"
        for jar in JARS
        if "javac" in tools and not (JAVA_DIR / f"{jar}.jar").exists()
    ]
    if "go" in tools and not (GO_MODULES / "src" / "google.golang.org" / "grpc").is_dir():
        missing.append(f"{GO_MODULES}/src/google.golang.org/grpc")
    if not missing:
        return
    message = f"missing {', '.join(missing)}: install the Debian packages .ci/run names"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true)", pytrace=False)
    pytest.skip(message)


def run(command: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def generate(tmp_path: Path, language: str) -> Path:
    """Run buf with buf.gen.yaml's plugins for `language` (its out folder), into tmp_path."""
    chosen: dict[str, Any] = template()
    chosen["plugins"] = [
        {**p, "out": str(tmp_path / language)}
        for p in chosen["plugins"]
        if p["out"] == f"clients/gen/{language}"
    ]
    assert chosen["plugins"], f"buf.gen.yaml has no {language} plugins"
    (tmp_path / "buf.gen.yaml").write_text(yaml.safe_dump(chosen))
    # Debian installs the grpc-java plugin as grpc_java_plugin.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    plugin = shutil.which("grpc_java_plugin")
    if plugin is not None:
        (bin_dir / "protoc-gen-grpc-java").symlink_to(plugin)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    run(
        [str(BUF), "generate", "--template", str(tmp_path / "buf.gen.yaml")], cwd=REPO_ROOT, env=env
    )
    return tmp_path / language


@pytest.mark.slow
@pytest.mark.timeout(2 * BUILD_TIMEOUT_S)
def test_go_stubs_compile_and_encode_like_python(tmp_path: Path) -> None:
    require("go", "protoc-gen-go", "protoc-gen-go-grpc")
    out = generate(tmp_path, "go")
    assert (out / "okra" / "workflow" / "v1" / "workflow_grpc.pb.go").is_file()
    # GOPATH mode over Debian's module sources: nothing is downloaded.
    gopath = tmp_path / "gopath"
    shutil.copytree(out, gopath / "src" / GO_PACKAGE)
    check = gopath / "src" / "okra.dev" / "check"
    check.mkdir(parents=True)
    (check / "main.go").write_text(GO_CHECK)
    env = {
        **os.environ,
        "GOPATH": f"{gopath}{os.pathsep}{GO_MODULES}",
        "GO111MODULE": "off",
        "GOCACHE": str(tmp_path / "gocache"),
        "GOFLAGS": "",
    }
    run(["go", "build", f"{GO_PACKAGE}/..."], cwd=tmp_path, env=env)
    run(["go", "build", "-o", str(tmp_path / "check"), "okra.dev/check"], cwd=tmp_path, env=env)
    encoded = run([str(tmp_path / "check"), json.dumps(RUN_REQUEST)], cwd=tmp_path)
    # Bytes from Go decode in Python to the same request.
    decoded = pb.RunRequest.FromString(bytes.fromhex(encoded.strip()))
    assert decoded == json_format.ParseDict(RUN_REQUEST, pb.RunRequest())


@pytest.mark.slow
@pytest.mark.timeout(2 * BUILD_TIMEOUT_S)
def test_java_stubs_compile(tmp_path: Path) -> None:
    require("javac", "protoc", "grpc_java_plugin")
    out = generate(tmp_path, "java")
    sources = sorted(str(p) for p in out.rglob("*.java"))
    assert str(out / "dev" / "okra" / "workflow" / "v1" / "WorkflowHostAPIGrpc.java") in sources
    classpath = os.pathsep.join(str(JAVA_DIR / f"{jar}.jar") for jar in JARS)
    classes = tmp_path / "classes"
    run(["javac", "-nowarn", "-d", str(classes), "-cp", classpath, *sources], cwd=tmp_path)
    assert (classes / "dev" / "okra" / "workflow" / "v1" / "WorkflowHostAPIGrpc.class").is_file()
