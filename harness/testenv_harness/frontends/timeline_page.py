"""The run timeline as one self-contained HTML page: the events (timeline.py) inline as JSON, and
inline CSS and JavaScript that draw them as SVG. Nothing is fetched when the page is viewed.

A row per worker; along it, lane by lane: the run's own steps (cluster, operator, environment,
data plane, teardown), the worker's (its namespace, waits, forwards, reset), each service's pods
(scheduled, started, ready) and host processes, then its tests as bars coloured by outcome.
Hovering a bar names it and its duration (an SVG <title>); a slider zooms in time.
"""

from __future__ import annotations

import html
import json
from typing import Any

_STYLE = """
:root { --text: #1d2330; --muted: #667085; --line: #e4e7ec; --band: #f7f8fa; }
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 20px 28px; font: 13px/1.4 system-ui, -apple-system, "Segoe UI",
  Roboto, "DejaVu Sans", sans-serif; color: var(--text); background: #fff; }
h1 { font-size: 18px; margin: 0 0 2px; }
#summary { color: var(--muted); margin-bottom: 10px; }
#summary b { color: var(--text); font-weight: 600; }
#summary .failed, #summary .error { color: #c62828; }
#controls { display: flex; align-items: flex-start; gap: 6px 14px; margin-bottom: 8px; }
#legend { display: flex; flex: 1 1 0; min-width: 0; flex-wrap: wrap; gap: 4px 12px; }
.legend { display: inline-flex; align-items: center; gap: 5px; color: var(--muted); }
.legend i { display: inline-block; width: 14px; height: 10px; border-radius: 2px; }
#zoom-box { flex: none; color: var(--muted); display: inline-flex; gap: 6px; align-items: center; }
#chart { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; }
svg { display: block; font-size: 11px; }
.axis text { fill: var(--muted); }
.grid { stroke: var(--line); stroke-width: 1; }
.row-band { fill: var(--band); }
.row-title { font-weight: 600; font-size: 12px; fill: var(--text); }
.row-title tspan { font-weight: 400; fill: var(--muted); }
.lane-label { fill: var(--muted); }
.bar { stroke: rgba(0, 0, 0, .18); stroke-width: .5; }
.bar:hover { stroke: #111; stroke-width: 1.5; }
.bar-label { fill: #fff; pointer-events: none; paint-order: stroke; stroke: rgba(0, 0, 0, .3);
  stroke-width: 2px; }
.phase { fill: #fff; opacity: .45; pointer-events: none; }
.kind-set-up { fill: #4a78c2; }
.kind-teardown { fill: #8a63c9; }
.kind-worker { fill: #1f9aa5; }
.kind-host { fill: #c99a1e; }
.kind-command { fill: #546e7a; }
.kind-pod.phase-scheduling { fill: #b7c8e6; }
.kind-pod.phase-starting { fill: #84a6dc; }
.kind-pod.phase-becoming-ready { fill: #4f7fc9; }
.bar.step-failed { fill: #c62828; }
.test.passed { fill: #2e9d4f; }
.test.failed { fill: #d93b3b; }
.test.error { fill: #e07b00; }
.test.skipped, .test.xfailed { fill: #9aa0a6; }
.test.xpassed { fill: #b3671b; }
.legend .light { opacity: .5; }
#failures { margin-top: 14px; }
#failures h2 { font-size: 14px; margin: 0 0 6px; }
#failures table { border-collapse: collapse; }
#failures td { padding: 3px 10px 3px 0; vertical-align: top; }
#failures td.msg { color: #c62828; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("timeline-data").textContent);
  var events = data.events, run = data.run;
  var NS = "http://www.w3.org/2000/svg";
  var LABEL = 150, RIGHT = 24, AXIS = 26, TRACK = 16, GAP = 3, LANE_GAP = 5, TITLE = 22, ROW_GAP = 12;
  var KINDS = [["set-up", "run set-up step", "kind-set-up"], ["worker", "worker step", "kind-worker"],
    ["pod", "pod scheduled, started, ready", "kind-pod phase-becoming-ready"],
    ["host", "host process (local cluster)", "kind-host"], ["teardown", "teardown", "kind-teardown"],
    ["passed", "test passed", "test passed"], ["failed", "test failed", "test failed"],
    ["error", "test error", "test error"], ["skipped", "skipped / xfailed", "test skipped"],
    ["phase", "a test's setup and teardown", "test passed light"],
    ["command", "the command (testenv run)", "kind-command"]];

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var key in attrs) { node.setAttribute(key, attrs[key]); }
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function seconds(value) {
    return value < 10 ? value.toFixed(2) + "s" : value < 120 ? value.toFixed(1) + "s"
      : Math.floor(value / 60) + "m" + Math.round(value % 60) + "s";
  }
  function clock(at) { return new Date(at * 1000).toLocaleTimeString(); }
  function slug(text) { return String(text).toLowerCase().replace(/[^a-z0-9]+/g, "-"); }

  var t0 = run.started, t1 = run.finished;
  events.forEach(function (e) { t0 = Math.min(t0, e.start); t1 = Math.max(t1, e.end); });
  var total = Math.max(t1 - t0, 0.001);

  var rows = {};
  for (var w = 0; w < (run.workers || 0); w++) { rows[w] = true; }
  events.forEach(function (e) { if (e.row !== null && e.row !== undefined) { rows[e.row] = true; } });
  rows = Object.keys(rows).map(Number).sort(function (a, b) { return a - b; });

  function lanesOf(row) {
    var services = {};
    events.forEach(function (e) {
      if (e.row === row && ["run", "worker", "tests"].indexOf(e.lane) < 0) { services[e.lane] = true; }
    });
    var lanes = [["run", events.filter(function (e) { return e.row === null || e.row === undefined; })],
      ["worker", events.filter(function (e) { return e.row === row && e.lane === "worker"; })]];
    Object.keys(services).sort().forEach(function (name) {
      lanes.push([name, events.filter(function (e) { return e.row === row && e.lane === name; })]);
    });
    lanes.push(["tests", events.filter(function (e) { return e.row === row && e.lane === "tests"; })]);
    return lanes;
  }

  // Bars that overlap in time go to tracks below each other; the others share a track.
  function pack(list, scale) {
    var tracks = [];
    list.slice().sort(function (a, b) { return a.start - b.start || b.end - a.end; }).forEach(function (e) {
      // By their true widths: a bar drawn wider than it lasted (2px at least) may overlap the next.
      var x = (e.start - t0) * scale, x2 = x + (e.end - e.start) * scale;
      var track = tracks.find(function (t) { return t.end <= x + 1; });
      if (!track) { track = {end: 0, items: []}; tracks.push(track); }
      track.items.push(e); track.end = x2;
    });
    return tracks.length ? tracks : [{end: 0, items: []}];
  }

  function describe(e) {
    var text = e.name + " \u2014 " + seconds(e.end - e.start);
    text += " (" + clock(e.start) + " to " + clock(e.end) + ")";
    if (e.outcome && e.kind !== "test") { text += " \u2014 " + e.outcome; }
    return e.detail ? text + "\n" + e.detail : text;
  }

  function classes(e) {
    var list = ["bar", "kind-" + e.kind];
    if (e.kind === "test") { list.push("test", e.outcome || "passed"); }
    else if (e.outcome === "failed") { list.push("step-failed"); }
    if (e.phase) { list.push("phase-" + slug(e.phase)); }
    return list.join(" ");
  }

  function draw(zoom) {
    var box = document.getElementById("chart");
    var width = Math.max(box.clientWidth - 2, 700) * zoom;
    var scale = (width - LABEL - RIGHT) / total;
    var layout = rows.map(function (row) {
      var lanes = lanesOf(row).map(function (lane) { return [lane[0], pack(lane[1], scale)]; });
      var height = TITLE + lanes.reduce(function (sum, l) {
        return sum + l[1].length * (TRACK + GAP) + LANE_GAP;
      }, 0);
      return {row: row, lanes: lanes, height: height};
    });
    var height = AXIS + layout.reduce(function (sum, r) { return sum + r.height + ROW_GAP; }, 0);
    var svg = el("svg", {width: width, height: height, id: "timeline"});

    var steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
    var step = steps.find(function (s) { return s * scale >= 70; }) || 3600;
    var axis = el("g", {"class": "axis"}, svg);
    for (var t = 0; t <= total + 1e-9; t += step) {
      var x = LABEL + t * scale;
      el("line", {"class": "grid", x1: x, x2: x, y1: AXIS - 6, y2: height}, axis);
      el("text", {x: x + 3, y: AXIS - 10}, axis).textContent = "+" + seconds(t).replace(".00s", "s");
    }

    var y = AXIS;
    layout.forEach(function (r) {
      var g = el("g", {"class": "row", "data-worker": r.row}, svg);
      el("rect", {"class": "row-band", x: 0, y: y, width: width, height: r.height}, g);
      var title = el("text", {"class": "row-title", x: 8, y: y + 15}, g);
      title.textContent = "worker " + r.row;
      var info = (run.rows || {})[r.row] || {};
      var more = [info.namespace, (info.xdist || []).join(", ")].filter(Boolean).join("  \u00b7  ");
      if (more) { el("tspan", {dx: 8}, title).textContent = more; }
      var top = y + TITLE;
      r.lanes.forEach(function (lane) {
        var laneG = el("g", {"class": "lane", "data-lane": lane[0]}, g);
        el("text", {"class": "lane-label", x: 16, y: top + TRACK - 4}, laneG).textContent = lane[0];
        lane[1].forEach(function (track, i) {
          track.items.forEach(function (e) {
            var bx = LABEL + (e.start - t0) * scale, bw = Math.max((e.end - e.start) * scale, 2);
            var by = top + i * (TRACK + GAP);
            var box = {"class": classes(e), x: bx, y: by, width: bw, height: TRACK, rx: 2};
            var rect = el("rect", box, laneG);
            el("title", {}, rect).textContent = describe(e);
            (e.phases || []).forEach(function (p) {  // set-up and teardown lighter than the test itself
              var pw = (p.end - p.start) * scale;
              if (p.when !== "call" && pw >= 1) {
                var at = {"class": "phase " + p.when, x: LABEL + (p.start - t0) * scale, y: by};
                el("rect", Object.assign(at, {width: pw, height: TRACK}), laneG);
              }
            });
            var label = e.kind === "test" ? e.name.split("::").pop() : e.name;
            if (bw > 46) {
              var clip = "c" + Math.random().toString(36).slice(2);
              var cp = el("clipPath", {id: clip}, laneG);
              el("rect", {x: bx, y: by, width: bw - 3, height: TRACK}, cp);
              var at = {"class": "bar-label", x: bx + 3, y: by + TRACK - 4};
              at["clip-path"] = "url(#" + clip + ")";
              el("text", at, laneG).textContent = label;
            }
          });
        });
        top += lane[1].length * (TRACK + GAP) + LANE_GAP;
      });
      y += r.height + ROW_GAP;
    });
    box.replaceChildren(svg);
  }

  function summary() {
    var counts = {};
    events.forEach(function (e) {
      if (e.kind === "test") { counts[e.outcome] = (counts[e.outcome] || 0) + 1; }
    });
    var parts = ["passed", "failed", "error", "skipped", "xfailed", "xpassed"].filter(function (o) {
      return counts[o];
    }).map(function (o) { return '<b class="' + o + '">' + counts[o] + "</b> " + o; });
    var head = [run.name ? "run <b>" + run.name + "</b>" : "",
      run.cluster ? "cluster <b>" + run.cluster + "</b>" : "",
      "<b>" + rows.length + "</b> worker" + (rows.length === 1 ? "" : "s"),
      "started " + new Date(t0 * 1000).toLocaleString(), "<b>" + seconds(total) + "</b> in all"];
    document.getElementById("summary").innerHTML = head.filter(Boolean).concat(parts).join(" \u00b7 ");
    var legend = document.getElementById("legend");
    KINDS.forEach(function (k) {
      if (k[0] === "command" && !events.some(function (e) { return e.kind === "command"; })) { return; }
      var item = document.createElement("span");
      item.className = "legend";
      item.innerHTML = '<svg width="14" height="10"><rect class="' + k[2] +
        '" width="14" height="10" rx="2"/></svg>';
      item.appendChild(document.createTextNode(k[1]));
      legend.appendChild(item);
    });
    var failed = events.filter(function (e) {
      return e.kind === "test" && (e.outcome === "failed" || e.outcome === "error");
    });
    if (failed.length) {
      var box = document.getElementById("failures");
      var h2 = document.createElement("h2");
      h2.textContent = "Failed tests";
      var table = document.createElement("table");
      failed.forEach(function (e) {
        var tr = table.insertRow();
        tr.className = "failure";
        [e.name, "worker " + e.row, seconds(e.end - e.start), (e.detail || "").split("\n").slice(1).join(" ")]
          .forEach(function (text, i) {
            var td = tr.insertCell(); td.textContent = text; if (i === 3) { td.className = "msg"; }
          });
      });
      box.appendChild(h2); box.appendChild(table);
    }
  }

  // Escape every text that the summary writes as HTML.
  function text(value) {
    var d = document.createElement("div"); d.textContent = value; return d.innerHTML;
  }
  run.name = run.name ? text(run.name) : run.name;
  run.cluster = run.cluster ? text(run.cluster) : run.cluster;

  summary();
  var zoom = document.getElementById("zoom");
  zoom.addEventListener("input", function () { draw(Number(zoom.value)); });
  window.addEventListener("resize", function () { draw(Number(zoom.value)); });
  draw(Number(zoom.value));
  document.body.setAttribute("data-drawn", "true");
})();
"""


def render(data: dict[str, Any]) -> str:
    """The page for the timeline `data` (timeline.Timeline.data)."""
    payload = json.dumps(data).replace("</", "<\\/")
    name = str((data.get("run") or {}).get("name") or "")
    title = html.escape(f"kube-testenv timeline {name}".strip())
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>kube-testenv run timeline</h1>
<div id="summary"></div>
<div id="controls"><span id="legend"></span>
<label id="zoom-box">zoom <input id="zoom" type="range" min="1" max="40" step="1" value="1"></label></div>
<div id="chart"><noscript>This page draws the timeline with JavaScript; the events are in the
JSON file beside it.</noscript></div>
<div id="failures"></div>
<script id="timeline-data" type="application/json">{payload}</script>
<script>{_SCRIPT}</script>
</body>
</html>
"""
