"""Generates the low-level client (src/stratum_client/_generated, not kept in git) from the
OpenAPI document the server serves (`openapi.json`, written by `make clients-openapi`) with
openapi-python-client.

One rewrite first: a schema whose `type` lists every JSON type but null (the document's
`NonNull`, "any value except null") has no Python form the generator knows (it reads the
list as a union and rejects its `array` member for lacking `items`); it becomes a schema of
any value. The generation fails when the generator leaves out an endpoint or a schema, so a
document the client cannot express fails the build.
"""

import json
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ALL_BUT_NULL = {"string", "number", "integer", "boolean", "object", "array"}


def rewrite(node):
    if isinstance(node, dict):
        t = node.get("type")
        if isinstance(t, list) and set(t) == ALL_BUT_NULL:
            del node["type"]
        for value in node.values():
            rewrite(value)
    elif isinstance(node, list):
        for value in node:
            rewrite(value)


def main() -> int:
    doc = json.loads((HERE / "openapi.json").read_text())
    rewrite(doc)
    build = HERE / "build"
    build.mkdir(exist_ok=True)
    spec = build / "openapi.json"
    spec.write_text(json.dumps(doc))
    out = subprocess.run(
        [
            str(pathlib.Path(sys.executable).parent / "openapi-python-client"),
            "generate",
            "--path", str(spec),
            "--meta", "none",
            "--output-path", str(HERE / "src" / "stratum_client" / "_generated"),
            "--overwrite",
            "--config", str(HERE / "generator.yaml"),
        ],
        capture_output=True,
        text=True,
    )
    text = out.stdout + out.stderr
    dropped = [
        line
        for line in text.splitlines()
        if "will not be generated" in line or "Unable to process schema" in line or "Unable to parse" in line
    ]
    if out.returncode != 0 or dropped:
        sys.stderr.write(text)
        sys.stderr.write("generate.py: the generator left parts of the document out\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
