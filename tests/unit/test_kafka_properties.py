"""server.properties for the local Kafka broker: whatever a pod's KAFKA_* environment holds, Java
reads back exactly the properties we wrote, no more (a value cannot end its line and add one)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from testenv_harness.services.kafka import runtime

#: Loads a properties file as Kafka does (Properties.load on a byte stream: ISO 8859-1) and prints
#: it as JSON, with every non-ASCII character escaped so the output's encoding cannot matter.
_READER = """
import java.io.FileInputStream;
import java.util.Properties;
import java.util.TreeSet;

public class Read {
    static String quoted(String s) {
        StringBuilder b = new StringBuilder("\\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\\\') b.append('\\\\').append(c);
            else if (c < 0x20 || c > 0x7e) b.append(String.format("\\\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) { p.load(in); }
        StringBuilder out = new StringBuilder("{");
        for (String k : new TreeSet<>(p.stringPropertyNames())) {
            if (out.length() > 1) out.append(',');
            out.append(quoted(k)).append(':').append(quoted(p.getProperty(k)));
        }
        System.out.println(out.append('}'));
    }
}
"""

NASTY = {
    "log.dirs": "/tmp/data\nprocess.roles=broker\\",
    "listeners": "  leading blanks, trailing \\\\ and a tab\there",
    "weird key=with:separators #and! comment marks": "x",
    "unicode": "caf\u00e9 \u2603 \U0001f600 \x00\x7f",
    "empty": "",
    "#comment": "!bang",
}


@pytest.mark.skipif(shutil.which("java") is None, reason="needs a JDK (the local Kafka broker's own)")
def test_java_reads_back_exactly_what_was_written(tmp_path: Path) -> None:
    reader = tmp_path / "Read.java"
    reader.write_text(_READER)
    path = runtime.write_properties(NASTY, tmp_path / "server.properties")
    done = subprocess.run(["java", str(reader), str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == NASTY


def test_one_line_per_property_whatever_the_values() -> None:
    lines = "".join(
        f"{runtime._escaped(k, key=True)}={runtime._escaped(v, key=False)}\n" for k, v in NASTY.items()
    )
    assert len(lines.splitlines()) == len(NASTY)
    assert lines.isascii()
