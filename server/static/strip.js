// A scrolling waveform strip on a canvas, like a bedside monitor's.
//
// Samples go into a fixed-size ring buffer (values and their local times), so memory stays flat
// however long it runs. Frames arrive about once a second; each sample is given a time on the
// page's clock and the strip is drawn `delayMs` behind now, so it scrolls smoothly between
// frames. Consecutive frames are laid end to end, slewing gently towards their arrival times to
// follow clock drift; a missing frame (sequence jump, dropped frames) or a late one starts a new
// run, so a gap is drawn as a gap, never bridged by a line.

const GAP_FACTOR = 2.5; // samples further apart than this many sample intervals are not joined
const SLEW = 0.05; // fraction of the arrival-time error corrected per frame
const REANCHOR_MS = 600; // further off than this, the frame starts a new run at its arrival time
const MAX_MARKERS = 32;

export class WaveStrip {
  constructor(canvas, { label, color, units = "", windowMs = 8000, delayMs = 1400, capacity = 4096 }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.label = label;
    this.color = color;
    this.units = units;
    this.windowMs = windowMs;
    this.delayMs = delayMs;
    this.values = new Float32Array(capacity);
    this.times = new Float64Array(capacity);
    this.head = 0; // next write position
    this.count = 0;
    this.markers = [];
    this.lo = -1;
    this.hi = 1;
    this.rate = 125;
    this.resetRun();
    this.grid = document.createElement("canvas");
    this.size = { w: 0, h: 0, dpr: 1 };
  }

  resetRun() {
    this.streamId = null;
    this.lastSeq = null;
    this.lastEnd = null;
  }

  /** Append one frame (`samples`: Float32Array) that arrived at `arrivedMs` (performance.now()). */
  push(streamId, seq, samples, rate, arrivedMs, dropped = 0) {
    const n = samples.length;
    if (!n || !(rate > 0)) return;
    this.rate = rate;
    const step = 1000 / rate;
    const dur = n * step;
    const actualStart = arrivedMs - dur;
    let start = actualStart;
    let end = arrivedMs;
    const continuous = streamId === this.streamId && seq === this.lastSeq + 1 && !dropped && this.lastEnd !== null;
    if (continuous && Math.abs(actualStart - this.lastEnd) < REANCHOR_MS) {
      start = this.lastEnd;
      end = Math.max(start + dur * 0.5, start + dur + SLEW * (arrivedMs - (start + dur)));
    } else if (this.lastEnd !== null && start < this.lastEnd + GAP_FACTOR * step) {
      start = this.lastEnd + GAP_FACTOR * step; // a new run never goes back in time
      end = start + dur;
    }
    const k = (end - start) / n;
    const cap = this.values.length;
    for (let i = 0; i < n; i++) {
      this.values[this.head] = samples[i];
      this.times[this.head] = start + i * k;
      this.head = (this.head + 1) % cap;
    }
    this.count = Math.min(cap, this.count + n);
    this.streamId = streamId;
    this.lastSeq = seq;
    this.lastEnd = end;
  }

  /** A labelled vertical line at page time `atMs`. */
  mark(atMs, text, color = "#f5a524") {
    this.markers.push({ at: atMs, text, color });
    if (this.markers.length > MAX_MARKERS) this.markers.shift();
  }

  clear() {
    this.count = 0;
    this.markers.length = 0;
    this.resetRun();
  }

  fit() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(this.canvas.clientWidth * dpr);
    const h = Math.round(this.canvas.clientHeight * dpr);
    if (w === this.size.w && h === this.size.h && dpr === this.size.dpr) return;
    this.size = { w, h, dpr };
    this.canvas.width = w;
    this.canvas.height = h;
    this.grid.width = w;
    this.grid.height = h;
    if (!w || !h) return; // hidden or collapsed: no grid (and a 0-wide grid's step would be 0, its loop endless)
    const g = this.grid.getContext("2d");
    g.fillStyle = "#0b1418";
    g.fillRect(0, 0, w, h);
    const minor = (w / (this.windowMs / 1000)) / 5; // 5 minor squares a second
    for (let i = 0, x = w; x >= 0; i++, x -= minor) {
      g.fillStyle = i % 5 === 0 ? "#1c3038" : "#13222a";
      g.fillRect(Math.round(x), 0, 1, h);
    }
    for (let i = 0, y = h / 2; y >= 0; i++, y -= minor) {
      g.fillStyle = i % 5 === 0 ? "#1c3038" : "#13222a";
      g.fillRect(0, Math.round(y), w, 1);
      g.fillRect(0, Math.round(h - y), w, 1);
    }
  }

  /** Draw the window ending `delayMs` before `nowMs`. */
  draw(nowMs) {
    this.fit();
    const { w, h, dpr } = this.size;
    if (!w || !h) return;
    const ctx = this.ctx;
    ctx.drawImage(this.grid, 0, 0);
    const right = nowMs - this.delayMs;
    const left = right - this.windowMs;
    const cap = this.values.length;
    // Visible range, newest first, and its extent for the vertical scale.
    let min = Infinity;
    let max = -Infinity;
    let first = -1;
    let visible = 0;
    for (let j = 0; j < this.count; j++) {
      const i = (this.head - 1 - j + cap) % cap;
      const t = this.times[i];
      if (t > right) continue;
      if (t < left) break;
      if (first < 0) first = j;
      visible = j - first + 1;
      const v = this.values[i];
      if (v < min) min = v;
      if (v > max) max = v;
    }
    if (visible > 1 && Number.isFinite(min)) {
      const pad = Math.max((max - min) * 0.12, 1e-3);
      const ease = max + pad > this.hi || min - pad < this.lo ? 0.25 : 0.03;
      this.hi += (max + pad - this.hi) * ease;
      this.lo += (min - pad - this.lo) * ease;
      const span = this.hi - this.lo || 1;
      const gapMs = GAP_FACTOR * 1000 / this.rate;
      ctx.strokeStyle = this.color;
      ctx.lineWidth = 1.6 * dpr;
      ctx.lineJoin = "round";
      ctx.beginPath();
      let prevT = null;
      for (let j = first; j < first + visible; j++) {
        const i = (this.head - 1 - j + cap) % cap;
        const t = this.times[i];
        const v = this.values[i];
        const x = ((t - left) / this.windowMs) * w;
        const y = h - ((v - this.lo) / span) * h;
        if (prevT === null || prevT - t > gapMs || !Number.isFinite(v)) ctx.moveTo(x, y);
        else ctx.lineTo(x, y);
        prevT = Number.isFinite(v) ? t : null;
      }
      ctx.stroke();
    } else {
      ctx.fillStyle = "#5d7680";
      ctx.font = `${13 * dpr}px system-ui, sans-serif`;
      ctx.textAlign = "center";
      ctx.fillText("No signal", w / 2, h / 2);
      ctx.textAlign = "start";
    }
    for (const m of this.markers) {
      if (m.at < left || m.at > right) continue;
      const x = Math.round(((m.at - left) / this.windowMs) * w);
      ctx.fillStyle = m.color;
      ctx.fillRect(x, 0, Math.max(1, dpr), h);
      ctx.font = `${11 * dpr}px system-ui, sans-serif`;
      ctx.fillText(m.text, x + 4 * dpr, h - 8 * dpr);
    }
    ctx.fillStyle = this.color;
    ctx.font = `600 ${12 * dpr}px system-ui, sans-serif`;
    ctx.fillText(this.label, 10 * dpr, 18 * dpr);
    if (this.units) {
      ctx.fillStyle = "#5d7680";
      ctx.font = `${11 * dpr}px system-ui, sans-serif`;
      ctx.fillText(this.units, 10 * dpr, 34 * dpr);
    }
  }
}
