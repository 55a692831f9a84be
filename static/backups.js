/* Optional improvements for the backup pages; everything works without this file.
   - job pages: poll the JSON status and update the progress bar instead of reloading;
   - forms: refuse a double submit, ask before destructive posts;
   - restore: enable the button only once the confirmation is typed correctly. */
(function () {
  "use strict";
  var root = document.querySelector("[data-ttb-job]");
  if (root && root.getAttribute("data-ttb-finished") === "no") {
    var refresh = document.querySelector('meta[http-equiv="refresh"]');
    if (refresh) { refresh.parentNode.removeChild(refresh); }
    var url = root.getAttribute("data-ttb-job");
    var poll = function () {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (job) {
          if (job.finished) { window.location.reload(); return; }
          var state = root.querySelector('[data-ttb-field="state"]');
          var stage = root.querySelector('[data-ttb-field="stage"]');
          var bar = root.querySelector('[data-ttb-field="percent"]');
          if (state) { state.textContent = job.state; }
          if (stage) { stage.textContent = job.stage || job.message; }
          if (bar) {
            if (job.percent === null) { bar.removeAttribute("value"); }
            else { bar.value = job.percent; bar.textContent = job.percent + "%"; }
          }
          window.setTimeout(poll, 1000);
        })
        .catch(function () { window.setTimeout(function () { window.location.reload(); }, 3000); });
    };
    window.setTimeout(poll, 500);
  }
  document.querySelectorAll(".ttb form").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      var question = form.getAttribute("data-ttb-confirm");
      if (question && !window.confirm(question)) { event.preventDefault(); return; }
      var busy = form.getAttribute("data-ttb-busy");
      if (!busy) { return; }  // e.g. downloads: the page stays, so the button must too
      if (form.dataset.ttbSent) { event.preventDefault(); return; }
      form.dataset.ttbSent = "1";
      form.querySelectorAll("button[type=submit]").forEach(function (b) {
        // Disable after the submit has been queued, so the button's own value still goes out.
        window.setTimeout(function () { b.disabled = true; b.textContent = busy; }, 0);
      });
    });
  });
  document.querySelectorAll("[data-ttb-expect]").forEach(function (input) {
    var accepted = input.getAttribute("data-ttb-expect").split("|");
    var button = input.form && input.form.querySelector("button[type=submit]");
    if (!button) { return; }
    var check = function () { button.disabled = accepted.indexOf(input.value.trim()) < 0; };
    input.addEventListener("input", check);
    check();
  });
})();
