// Small SVG charts, drawn here (no library): lines over time, and horizontal bars.

const SVG = "http://www.w3.org/2000/svg";
export const PALETTE = ["#2f7ed8", "#e4572e", "#29a36a", "#a259c4", "#f0a202", "#17becf", "#8c564b", "#d6336c"];

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A round number at or above `v` (1, 2, 5 × 10^n), so axis labels read well. */
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function short(v) {
  if (v >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return `${+v.toFixed(v < 10 ? 2 : 0)}`;
}

/**
 * Lines over the last `windowMs`: `series` is [{name, color, points: [[timeMs, value], ...]}].
 * Answers an <svg> element scaled to its container's width.
 */
export function lineChart(series, { windowMs, unit = "", width = 560, height = 180, now = Date.now() }) {
  const pad = { left: 44, right: 8, top: 8, bottom: 20 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  const max = niceCeil(Math.max(0, ...series.flatMap((s) => s.points.map((p) => p[1]))));
  const x = (t) => pad.left + ((t - (now - windowMs)) / windowMs) * w;
  const y = (v) => pad.top + h - (v / max) * h;
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    svg.append(el("line", { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(el("text", { x: pad.left - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" }, short(v)));
  }
  for (let i = 0; i <= 4; i++) {
    const t = now - windowMs + (windowMs * i) / 4;
    const ago = Math.round((now - t) / 1000);
    svg.append(el("text", { x: x(t), y: height - 4, class: "axis", "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, ago ? `-${ago}s` : "now"));
  }
  if (unit) svg.append(el("text", { x: pad.left + 4, y: pad.top + 10, class: "axis unit" }, unit));
  for (const s of series) {
    const points = s.points.filter((p) => p[0] >= now - windowMs);
    if (!points.length) continue;
    const d = points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    const path = el("path", { d, class: "line", stroke: s.color });
    path.append(el("title", {}, s.name));
    svg.append(path);
    const last = points[points.length - 1];
    svg.append(el("circle", { cx: x(last[0]), cy: y(last[1]), r: 2.5, fill: s.color }));
  }
  return svg;
}

/** A horizontal bar showing `value` of `max` (a load, a backlog), with its text beside it. */
export function bar(value, max, text, { warn = Infinity } = {}) {
  const width = 120;
  const svg = el("svg", { viewBox: `0 0 ${width} 12`, class: "bar", width, height: 12, role: "img" });
  const filled = max > 0 ? Math.min(1, value / max) * width : 0;
  svg.append(el("rect", { x: 0, y: 0, width, height: 12, class: "bar-bg" }));
  svg.append(el("rect", { x: 0, y: 0, width: filled, height: 12, class: value >= warn ? "bar-fill warn" : "bar-fill" }));
  svg.append(el("title", {}, text));
  return svg;
}
