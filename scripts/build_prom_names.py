#!/usr/bin/env python3
"""Builds target/tools/prom-names: Prometheus' own OTLP name translation
(github.com/prometheus/otlptranslator) behind a tiny command-line program
(scripts/prom-names/main.go), for tests/contract.rs.

Everything comes from Debian's archive, checked against the SHA-256 in its
package index: Go 1.23 from bookworm-backports and the translator's source
package from testing. Nothing is installed system-wide; the downloads are
cached in ~/.cache/bg-queue/debs and unpacked under target/tools/.

Usage: python3 scripts/build_prom_names.py   (scripts/test runs it)
"""
import hashlib
import lzma
import os
import pathlib
import shutil
import subprocess
import sys
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOOLS = ROOT / "target" / "tools"
UNPACKED = TOOLS / "debian"
OUTPUT = TOOLS / "prom-names"
SOURCE = ROOT / "scripts" / "prom-names"
CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "bg-queue" / "debs"
MIRROR = "http://deb.debian.org/debian"
GO = "1.23"
# (suite, package): Go from backports runs on this machine's bookworm; the
# translator (pure Go, no dependencies) is packaged in testing only.
PACKAGES = [
    ("bookworm-backports", f"golang-{GO}-go"),
    ("bookworm-backports", f"golang-{GO}-src"),
    ("testing", "golang-github-prometheus-otlptranslator-dev"),
]


def fail(message):
    print(f"build_prom_names: {message}", file=sys.stderr)
    sys.exit(1)


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.read()
    except OSError as error:
        fail(f"cannot download {url}: {error}")


def index(suite, arch):
    """{package: {field: value}} from a suite's package index."""
    text = lzma.decompress(fetch(f"{MIRROR}/dists/{suite}/main/binary-{arch}/Packages.xz")).decode()
    packages = {}
    for stanza in text.split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if "Package" in fields:
            packages[fields["Package"]] = fields
    return packages


def download(fields):
    """The .deb for one index entry, from the cache when its hash matches."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / pathlib.Path(fields["Filename"]).name
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == fields["SHA256"]:
        return path
    data = fetch(f"{MIRROR}/{fields['Filename']}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != fields["SHA256"]:
        fail(f"{fields['Filename']}: SHA-256 {digest}, the index says {fields['SHA256']}")
    path.write_bytes(data)
    return path


def main():
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    indexes = {}
    debs = []
    for suite, package in PACKAGES:
        if suite not in indexes:
            indexes[suite] = index(suite, arch)
        fields = indexes[suite].get(package)
        if fields is None:
            fail(f"{package} is not in Debian {suite} any more: update PACKAGES in {__file__}")
        debs.append(download(fields))
        print(f"ok   {package} {fields['Version']} ({suite})")
    shutil.rmtree(UNPACKED, ignore_errors=True)
    UNPACKED.mkdir(parents=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(UNPACKED)], check=True)
    go = UNPACKED / "usr" / "lib" / f"go-{GO}" / "bin" / "go"
    env = dict(os.environ,
               GO111MODULE="off",  # GOPATH mode: the packaged source is the dependency
               GOPATH=str(UNPACKED / "usr" / "share" / "gocode"),
               GOTOOLCHAIN="local", GOFLAGS="", CGO_ENABLED="0",
               GOCACHE=str(TOOLS / "go-build-cache"))
    env.pop("GOROOT", None)
    subprocess.run([str(go), "build", "-o", str(OUTPUT), "."], cwd=SOURCE, env=env, check=True)
    print(f"ok   built {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
