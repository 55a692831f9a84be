/* Optional improvements for the backup pages; everything works without this file.
   - job pages: poll the JSON status and update the progress bar instead of reloading;
   - forms: refuse a double submit, ask before destructive posts;
   - restore: enable the button only once the confirmation is typed correctly;
   - times: the same format as the server writes, in the reader's zone. */
(function () {
  "use strict";
  // Times: the server writes its own local time, "2026-11-25 09:15:00 CET"; the browser knows
  // the reader's zone, so every time (chart labels included) is rewritten in the same format.
  var two = function (n) { return (n < 10 ? "0" : "") + n; };
  var zoneName = function (moment) {
    try {
      var parts = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" }).formatToParts(moment);
      for (var i = 0; i < parts.length; i++) {
        if (parts[i].type === "timeZoneName") { return parts[i].value; }
      }
    } catch (e) { /* an old browser: fall through */ }
    var offset = -moment.getTimezoneOffset();
    return "UTC" + (offset < 0 ? "-" : "+") + two(Math.floor(Math.abs(offset) / 60)) + ":" + two(Math.abs(offset) % 60);
  };
  var format = function (moment) {
    return moment.getFullYear() + "-" + two(moment.getMonth() + 1) + "-" + two(moment.getDate()) + " " +
      two(moment.getHours()) + ":" + two(moment.getMinutes()) + ":" + two(moment.getSeconds()) + " " + zoneName(moment);
  };
  document.querySelectorAll(".ttb time[datetime], .ttb [data-ttb-utc]").forEach(function (el) {
    var moment = new Date(el.getAttribute("datetime") || el.getAttribute("data-ttb-utc"));
    if (!isNaN(moment.getTime())) { el.textContent = format(moment); }
  });
  // "Jump to date" means the reader's date: tell the server the reader's offset from UTC.
  document.querySelectorAll("[data-ttb-tz]").forEach(function (input) {
    input.value = String(-new Date().getTimezoneOffset());
  });
  var target = document.querySelector(".ttb .ttb-target");
  if (target && target.scrollIntoView) { target.scrollIntoView({ block: "center" }); }
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
