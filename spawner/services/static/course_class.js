// The class page: every student's course server, refreshed every few seconds; start, stop and open.
(function () {
  "use strict";
  const root = document.getElementById("course-class");
  const api = root.dataset.api;
  const xsrf = root.dataset.xsrf;
  const body = document.getElementById("class-body");
  const message = document.getElementById("class-message");
  const REFRESH_MS = 3000;

  const element = window.teachlabPages.element;

  function when(iso) {
    return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("Z", "").replace("+00:00", "") : "–";
  }

  async function act(student, action) {
    message.textContent = (action === "start" ? "Starting " : "Stopping ") + student + "'s server…";
    const response = await fetch(api + "/class/" + encodeURIComponent(student) + "/" + action, {
      method: "POST", headers: { "X-XSRFToken": xsrf }, credentials: "same-origin",
    });
    let payload = {};
    try { payload = await response.json(); } catch (error) { payload = { message: response.statusText }; }
    message.textContent = response.ok ? "The hub is " + (action === "start" ? "starting " : "stopping ") + student + "'s server." : payload.message;
    refresh();
  }

  function actions(row) {
    const cell = element("td", { class: "text-nowrap" });
    if (!row.known) return cell;
    if (row.status === "running") {
      cell.appendChild(element("a", { class: "btn btn-sm btn-success me-1 open-server", id: "open-" + row.username, href: row.server_url,
        target: "_blank", rel: "noopener", "aria-label": "Open " + row.username + "'s server", text: "open" }));
    }
    if (row.status === "running" || row.status === "starting") {
      const stop = element("button", { type: "button", class: "btn btn-sm btn-outline-danger stop-server", id: "stop-" + row.username,
        "aria-label": "Stop " + row.username + "'s server", text: "stop" });
      stop.addEventListener("click", function () { act(row.username, "stop"); });
      cell.appendChild(stop);
    }
    if (row.status === "stopped") {
      const start = element("button", { type: "button", class: "btn btn-sm btn-primary start-server", id: "start-" + row.username,
        "aria-label": "Start " + row.username + "'s server", text: "start" });
      start.addEventListener("click", function () { act(row.username, "start"); });
      cell.appendChild(start);
    }
    return cell;
  }

  function render(students) {
    const focused = document.activeElement && document.activeElement.id;
    body.replaceChildren();
    if (students.length === 0) {
      body.appendChild(element("tr", {}, [element("td", { colspan: "8", class: "text-muted", text: "No student is enrolled yet." })]));
    }
    students.forEach(function (row) {
      const version = element("td", { class: "version" }, [document.createTextNode(row.version || "–")]);
      if (row.outdated) version.appendChild(element("span", { class: "badge bg-warning text-dark ms-1", text: "older than current" }));
      body.appendChild(element("tr", { id: "student-" + row.username, "data-student": row.username }, [
        element("th", { scope: "row", text: row.username }),
        element("td", { class: "status", text: row.status }),
        element("td", { class: "small", text: when(row.started) }),
        element("td", { class: "small", text: when(row.last_activity) }),
        version,
        element("td", { class: "gpus", text: String(row.gpus_held) }),
        element("td", { class: "gpu-hours", text: row.gpu_hours.toFixed(2) }),
        actions(row),
      ]));
    });
    if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
  }

  async function refresh() {
    const response = await fetch(api + "/class", { headers: { "X-XSRFToken": xsrf }, credentials: "same-origin" });
    if (response.ok) render((await response.json()).students);
  }

  render(JSON.parse(document.getElementById("class-data").textContent).students);
  setInterval(refresh, REFRESH_MS);
})();
