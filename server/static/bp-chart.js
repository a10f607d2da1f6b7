// A patient's blood pressure history as a uPlot chart: systolic and diastolic over time, with the
// stage 2 thresholds (140/90 mmHg) drawn as dashed reference lines.

import uPlot from "/vendor/uPlot.esm.js";

const MAX_READINGS = 200;

export class BpChart {
  constructor(container) {
    this.container = container;
    this.plot = null;
    this.readings = [];
    new ResizeObserver(() => this.plot && this.render()).observe(container);
  }

  /** Readings as the REST history gives them (any order). */
  set(readings) {
    this.readings = [...readings]
      .sort((a, b) => Date.parse(a.measured_at) - Date.parse(b.measured_at))
      .slice(-MAX_READINGS);
    this.render();
  }

  add(reading) {
    this.set([...this.readings.filter((r) => r.id !== reading.id), reading]);
  }

  remove(id) {
    this.set(this.readings.filter((r) => r.id !== id));
  }

  render() {
    if (!this.readings.length) {
      this.clear();
      return;
    }
    const t = this.readings.map((r) => Date.parse(r.measured_at) / 1000);
    const data = [t, this.readings.map((r) => r.systolic), this.readings.map((r) => r.diastolic)];
    const width = Math.max(300, this.container.clientWidth);
    if (this.plot && this.plot.width === width) {
      this.plot.setData(data);
      return;
    }
    if (this.plot) this.plot.destroy();
    const point = (color) => ({ show: true, size: 7, fill: color, stroke: color });
    this.plot = new uPlot({
      width, height: 220,
      scales: { x: { time: true, range: (_, lo, hi) => (hi - lo < 3600 ? [lo - 43200, hi + 43200] : [lo, hi]) },
                y: { range: (_, lo, hi) => [Math.min(50, lo - 10), Math.max(190, hi + 10)] } },
      axes: [{ stroke: "#647880", grid: { stroke: "#eef2f4" } },
             { stroke: "#647880", grid: { stroke: "#eef2f4" }, label: "mmHg", size: 55 }],
      series: [{}, { label: "Systolic", stroke: "#c62828", width: 2, points: point("#c62828") },
               { label: "Diastolic", stroke: "#1c7fc0", width: 2, points: point("#1c7fc0") }],
      legend: { live: false },
      hooks: { drawAxes: [drawLimits] },
    }, data, this.container);
  }

  clear() {
    this.readings = [];
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

/** Dashed lines at the stage 2 thresholds, under the series. */
function drawLimits(u) {
  const { ctx, bbox } = u;
  ctx.save();
  ctx.strokeStyle = "#d9a0a0";
  ctx.lineWidth = devicePixelRatio;
  ctx.setLineDash([6 * devicePixelRatio, 5 * devicePixelRatio]);
  for (const value of [140, 90]) {
    const y = Math.round(u.valToPos(value, "y", true)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(bbox.left, y);
    ctx.lineTo(bbox.left + bbox.width, y);
    ctx.stroke();
  }
  ctx.restore();
}
