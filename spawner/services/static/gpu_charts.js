// The admins' GPU charts, drawn with uPlot (served from this service, never a CDN) from the JSON the page carries.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("gpu-chart-data").textContent);
  const palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

  function width(element) {
    return Math.max(320, element.clientWidth || 600);
  }

  function series(names, options) {
    return names.map(function (name, index) {
      return Object.assign({ label: name, stroke: palette[index % palette.length], width: 2 }, options || {});
    });
  }

  function draw(elementId, x, named, yLabel, extra) {
    const element = document.getElementById(elementId);
    if (!element || x.length === 0) {
      if (element) element.textContent = "No data yet.";
      return;
    }
    const names = Object.keys(named);
    const columns = [x].concat(names.map(function (name) { return named[name]; }));
    let lines = series(names, extra && extra.paths ? { paths: extra.paths } : {});
    if (extra && extra.total) {
      columns.push(extra.total);
      lines.push({ label: "all courses", stroke: "#444", width: 1, dash: [4, 4], paths: extra.paths });
    }
    new uPlot(
      {
        width: width(element),
        height: 300,
        scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(1, max)]; } } },
        axes: [{}, { label: yLabel }],
        series: [{ label: "time" }].concat(lines),
      },
      columns,
      element
    );
  }

  draw("term-usage-chart", data.term.days, data.term.series, "GPU-hours");
  draw("held-chart", data.held.times, data.held.series, "GPUs held", {
    total: data.held.total,
    paths: uPlot.paths.stepped({ align: 1 }),
  });
})();
