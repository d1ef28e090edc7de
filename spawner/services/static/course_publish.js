// The course environment page: check, publish (the log follows the build live), versions, rollback.
(function () {
  "use strict";
  const root = document.getElementById("course-publish");
  const api = root.dataset.api;
  const xsrf = root.dataset.xsrf;
  const editor = document.getElementById("environment-editor");
  const problemsBox = document.getElementById("environment-problems");
  const log = document.getElementById("publish-log");
  const statusLine = document.getElementById("publish-status");
  const resultBox = document.getElementById("publish-result");
  const checkButton = document.getElementById("check-environment");
  const publishButton = document.getElementById("publish-environment");
  let events = null;

  const element = window.teachlabPages.element;

  async function call(method, path, body) {
    const response = await fetch(api + path, {
      method: method,
      headers: { "Content-Type": "application/json", "X-XSRFToken": xsrf },
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
    let payload = {};
    try { payload = await response.json(); } catch (error) { payload = { message: response.statusText }; }
    return { status: response.status, payload: payload };
  }

  function showProblems(problems, heading) {
    problemsBox.replaceChildren();
    if (!problems) return;
    if (problems.length === 0) {
      problemsBox.appendChild(element("div", { class: "alert alert-success", id: "environment-valid", text: heading }));
      return;
    }
    const list = element("ul", { class: "mb-0", id: "environment-problem-list" },
      problems.map(function (line) { return element("li", { class: "font-monospace small", text: line }); }));
    problemsBox.appendChild(element("div", { class: "alert alert-danger" }, [element("p", { class: "mb-1 fw-bold", text: heading }), list]));
  }

  function busy(on) {
    checkButton.disabled = on;
    publishButton.disabled = on;
  }

  function renderVersions(data) {
    const body = document.getElementById("versions-body");
    body.replaceChildren();
    if (data.versions.length === 0) {
      body.appendChild(element("tr", {}, [element("td", { colspan: "8", class: "text-muted", text: "Not published yet." })]));
    }
    data.versions.forEach(function (version) {
      let last;
      if (version.current) {
        last = element("span", { class: "badge bg-success current-marker", text: "current" });
      } else {
        last = element("button", {
          type: "button", class: "btn btn-sm btn-outline-primary rollback", "data-version": version.version,
          id: "rollback-" + version.version, "aria-label": "Make " + version.version + " current again", text: "make current",
        });
        last.addEventListener("click", function () { rollback(version.version); });
      }
      body.appendChild(element("tr", { id: "version-" + version.version, class: version.current ? "table-success" : "" }, [
        element("td", { text: version.version }),
        element("td", { class: "small", text: version.created.replace("T", " ").replace("+00:00", "") }),
        element("td", { class: "font-monospace small", text: version.environment_hash }),
        element("td", { class: "small", text: version.size_mb + " MB" }),
        element("td", { class: "small", text: version.kernel_python || "" }),
        element("td", { class: "small scan", text: version.scan }),
        element("td", { class: "small", text: version.published_by }),
        element("td", {}, [last]),
      ]));
    });
    const history = document.getElementById("history-body");
    history.replaceChildren();
    data.history.forEach(function (entry) {
      history.appendChild(element("tr", {}, [
        element("td", { text: entry.at.replace("T", " ").replace("+00:00", "") }),
        element("td", { text: entry.actor }),
        element("td", { text: entry.action }),
        element("td", { text: entry.from_version || "–" }),
        element("td", { text: entry.to_version || "–" }),
        element("td", { text: entry.outcome + (entry.detail ? ": " + entry.detail : "") }),
      ]));
    });
  }

  async function refresh(withEditor) {
    const answer = await call("GET", "/versions");
    if (answer.status === 200) {
      renderVersions(answer.payload);
      if (withEditor) editor.value = answer.payload.environment;
    }
  }

  function showResult(job) {
    resultBox.replaceChildren();
    if (job.state === "succeeded") {
      const result = job.result;
      const words = {
        published: result.version + " is published and current (it was " + (result.previous || "not published") + ").",
        unchanged: "Nothing changed: " + result.version + " has this environment already and stays current.",
        restored: "This environment is the earlier " + result.version + ", which is current again.",
      };
      const lines = [element("p", { class: "mb-1 fw-bold", id: "publish-outcome", text: words[result.outcome] })];
      if (result.smoke) {
        lines.push(element("p", { class: "mb-1", id: "publish-smoke", text: "Smoke test passed: Python " + result.smoke.python +
          " in the kernel \u201c" + result.smoke.kernel + "\u201d; these import: " + result.smoke.imports.join(", ") + "." }));
      }
      lines.push(element("p", { class: "mb-0 small", id: "publish-scan", text: "Scan: " + result.scan }));
      resultBox.appendChild(element("div", { class: "alert alert-success", role: "status" }, lines));
      statusLine.textContent = "The publish by " + job.actor + " succeeded in " + result.seconds + " s.";
    } else {
      resultBox.appendChild(element("div", { class: "alert alert-danger", role: "alert", id: "publish-error" }, [
        element("p", { class: "mb-1 fw-bold", text: "Nothing was published; the current version stays current." }),
        element("p", { class: "mb-0 font-monospace small", text: job.error }),
      ]));
      statusLine.textContent = "The publish by " + job.actor + " failed.";
    }
  }

  function follow(eventsUrl) {
    if (events) events.close();
    log.textContent = "";
    busy(true);
    // An EventSource cannot send headers: the page's XSRF token goes in the URL, as the hub's services expect.
    events = new EventSource(eventsUrl + "?_xsrf=" + encodeURIComponent(xsrf));
    events.addEventListener("line", function (event) {
      log.textContent += JSON.parse(event.data) + "\n";
      log.scrollTop = log.scrollHeight;
    });
    events.addEventListener("end", function (event) {
      events.close();
      events = null;
      busy(false);
      showResult(JSON.parse(event.data));
      refresh(false);
    });
  }

  checkButton.addEventListener("click", async function () {
    const answer = await call("POST", "/validate", { environment: editor.value });
    if (answer.status !== 200) { showProblems([answer.payload.message], "The check did not run:"); return; }
    showProblems(answer.payload.problems, answer.payload.valid ? "No problems: this environment.yml is ready to publish." : "environment.yml has problems:");
  });

  publishButton.addEventListener("click", async function () {
    busy(true);
    resultBox.replaceChildren();
    showProblems(null);
    const answer = await call("POST", "/publish", { environment: editor.value });
    if (answer.status === 202) {
      statusLine.textContent = "Publishing: building the environment; the log follows below.";
      follow(answer.payload.events);
      log.focus();
      return;
    }
    busy(false);
    if (answer.status === 400 && answer.payload.problems) {
      showProblems(answer.payload.problems, "Nothing was published: environment.yml has problems:");
    } else {
      showProblems([answer.payload.message], "Nothing was published:");
    }
  });

  document.getElementById("environment-file").addEventListener("change", function (event) {
    const file = event.target.files[0];
    if (!file) return;
    file.text().then(function (content) {
      editor.value = content;
      showProblems(null);
      statusLine.textContent = "Loaded " + file.name + "; check or publish it.";
    });
  });

  async function rollback(version) {
    const answer = await call("POST", "/rollback", { version: version });
    if (answer.status === 200) {
      statusLine.textContent = version + " is current again" + (answer.payload.environment_restored ? "; its environment.yml is back in the editor." : ".");
      await refresh(true);
    } else {
      statusLine.textContent = "The rollback did not happen: " + answer.payload.message;
    }
  }

  const initial = JSON.parse(document.getElementById("course-data").textContent);
  renderVersions(initial);
  if (initial.job) {
    follow(api + "/publish/" + initial.job.id + "/events");
  }
})();
