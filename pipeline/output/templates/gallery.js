(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("gallery-data").textContent);
  var review = D.mode === "review";
  var body = document.body;
  var tiles = Array.prototype.slice.call(document.querySelectorAll(".tile"));
  var groups = Array.prototype.slice.call(document.querySelectorAll("section.item"));
  var local = {};
  var cur = null;
  var open = null;

  // #check: load and decode every image, read every video's metadata, then write the tally on <body>.
  if (location.hash === "#check") {
    var imgs = Array.prototype.slice.call(document.images);
    var vids = Array.prototype.slice.call(document.querySelectorAll("video"));
    imgs.forEach(function (i) { i.loading = "eager"; });
    var img = function (i) {
      return i.decode().then(function () { return i.complete && i.naturalWidth > 0; }, function () { return false; });
    };
    var vid = function (v) {
      return new Promise(function (done) {
        if (v.readyState >= 1) { done(true); return; }
        v.addEventListener("loadedmetadata", function () { done(true); });
        v.addEventListener("error", function () { done(false); });
        v.preload = "metadata"; v.load();
      });
    };
    Promise.all([Promise.all(imgs.map(img)), Promise.all(vids.map(vid))]).then(function (r) {
      var ok = r[0].filter(Boolean).length, vok = r[1].filter(Boolean).length;
      body.setAttribute("data-images-total", imgs.length); body.setAttribute("data-images-loaded", ok);
      body.setAttribute("data-images-broken", imgs.length - ok); body.setAttribute("data-videos-total", vids.length);
      body.setAttribute("data-videos-ready", vok); body.setAttribute("data-check", "done");
    });
  }

  // -- decisions: from the state (D.decisions); in a static page also this browser's own, newer ones
  try { local = review ? {} : JSON.parse(localStorage.getItem(D.store) || "{}") || {}; } catch (e) { local = {}; }
  function verdictOf(sha) {
    var s = D.decisions[sha] || null, l = local[sha];
    if (l && (!s || l.at >= s.at)) { return l.verdict === "undo" ? null : l; }
    return s;
  }
  function paint(tile) {
    var sha = tile.getAttribute("data-sha"), v = sha ? verdictOf(sha) : null;
    tile.setAttribute("data-decision", v ? v.verdict : "");
    var mark = tile.querySelector(".verdict");
    if (mark) {
      mark.textContent = v ? (v.verdict === "approve" ? "approved" : "rejected") : "";
      mark.title = v && v.note ? v.note : "";
    }
  }
  function say(text) { document.getElementById("say").textContent = text; }
  function decide(tile, verdict) {
    var a = tile && D.assets[+tile.getAttribute("data-i")];
    if (!a || !a.sha) { return; }
    var note = verdict === "reject" && open === tile ? document.getElementById("lb-note").value : "";
    var entry = { sha256: a.sha, verdict: verdict, note: note || null, path: a.path, item: a.item,
      at: new Date().toISOString() };
    var done = function () {
      tiles.forEach(function (t) { if (t.getAttribute("data-sha") === a.sha) { paint(t); } });
      if (open) { fill(open); }
      applyFilters();
    };
    if (!review) {
      local[a.sha] = entry;
      try { localStorage.setItem(D.store, JSON.stringify(local)); } catch (e) { say("not kept: " + e); return; }
      say(verdict + " kept in this browser; export them to import into the state");
      done();
      return;
    }
    say("saving…");
    fetch("api/decisions", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(entry), credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (res) {
        if (res.current) { D.decisions[a.sha] = res.current; } else { delete D.decisions[a.sha]; }
        say(verdict + " saved");
        done();
      })
      .catch(function (e) { say("not saved: " + e.message); });
  }

  // -- filters
  var F = ["step", "model", "status", "decision"].map(function (n) { return document.getElementById("f-" + n); });
  var failedOnly = document.getElementById("f-failed");
  function matches(t) {
    var want = F.map(function (f) { return f.value; });
    if (want[0] && t.getAttribute("data-step") !== want[0]) { return false; }
    if (want[1] && t.getAttribute("data-model") !== want[1]) { return false; }
    if (want[2] && t.getAttribute("data-status") !== want[2]) { return false; }
    var d = t.getAttribute("data-decision") || "none";
    if (want[3] && d !== want[3]) { return false; }
    return !(failedOnly.checked && !t.hasAttribute("data-failed"));
  }
  function applyFilters() {
    var n = 0;
    tiles.forEach(function (t) { var ok = matches(t); t.hidden = !ok; if (ok) { n++; } });
    groups.forEach(function (g) { g.hidden = !g.querySelector(".tile:not([hidden])") && !!g.querySelector(".tile"); });
    document.getElementById("shown").textContent = n + " of " + tiles.length + " shown";
  }
  F.concat([failedOnly]).forEach(function (f) { f.addEventListener("change", applyFilters); });

  // -- focus and keyboard
  function visible() { return tiles.filter(function (t) { return !t.hidden; }); }
  function focusTile(t) {
    if (!t) { return; }
    if (cur) { cur.tabIndex = -1; }
    cur = t; t.tabIndex = 0; t.focus({ preventScroll: true });
    t.scrollIntoView({ block: "nearest" });
    if (open) { show(t); }
  }
  function step(dir) {
    var vis = visible(), i = vis.indexOf(cur);
    focusTile(vis[Math.min(vis.length - 1, Math.max(0, i < 0 ? 0 : i + dir))]);
  }
  function vertical(dir) {
    var vis = visible(), i = vis.indexOf(cur);
    if (i < 0) { focusTile(vis[0]); return; }
    var r = cur.getBoundingClientRect(), x = r.left + r.width / 2, rowTop = null, best = null, bestDx = Infinity;
    for (var j = i + dir; j >= 0 && j < vis.length; j += dir) {
      var q = vis[j].getBoundingClientRect();
      if (dir > 0 ? q.top <= r.top + 4 : q.top >= r.top - 4) { continue; }
      if (rowTop === null) { rowTop = q.top; }
      if (Math.abs(q.top - rowTop) > 4) { break; }
      var dx = Math.abs(q.left + q.width / 2 - x);
      if (dx < bestDx) { bestDx = dx; best = vis[j]; }
    }
    focusTile(best || cur);
  }
  document.addEventListener("focusin", function (ev) {
    var t = ev.target.closest && ev.target.closest(".tile");
    if (t && t !== cur) { if (cur) { cur.tabIndex = -1; } cur = t; t.tabIndex = 0; }
  });
  document.addEventListener("keydown", function (ev) {
    var k = ev.key;
    if (ev.target.matches && ev.target.matches("input, select, textarea")) {
      if (k === "Escape") { ev.target.blur(); }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) { return; }
    if (k === "Escape" && open) { close(); }
    else if (k === "ArrowRight") { step(1); }
    else if (k === "ArrowLeft") { step(-1); }
    else if (k === "ArrowDown") { if (open) { step(1); } else { vertical(1); } }
    else if (k === "ArrowUp") { if (open) { step(-1); } else { vertical(-1); } }
    else if (k === "Enter" && cur && !open) { show(cur); }
    else if (k === "a" || k === "r" || k === "u") {
      decide(open || cur, { a: "approve", r: "reject", u: "undo" }[k]);
    } else { return; }
    ev.preventDefault();
  });

  // -- lightbox
  var lb = document.getElementById("lb");
  function text(id, value) { document.getElementById(id).textContent = value; }
  function fill(tile) {
    var a = D.assets[+tile.getAttribute("data-i")] || {}, v = a.sha ? verdictOf(a.sha) : null;
    text("lb-title", (a.item || "") + " · " + (a.step || "") + " " + (a.n || ""));
    text("lb-verdict", v ? v.verdict + "d " + v.at + (v.note ? ": " + v.note : "") : "no decision yet");
    var facts = document.getElementById("lb-facts");
    facts.textContent = "";
    (a.facts || []).forEach(function (pair) {
      var dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = pair[0]; dd.textContent = pair[1]; facts.appendChild(dt); facts.appendChild(dd);
    });
    text("lb-prompt", a.prompt || "(no prompt)");
    text("lb-request", JSON.stringify(a.request || {}, null, 2));
    text("lb-sidecar", a.sidecar ? JSON.stringify(a.sidecar, null, 2) : "(no sidecar)");
    var link = document.getElementById("lb-file");
    link.hidden = !a.href; link.href = a.href || "#";
  }
  function show(tile) {
    var a = D.assets[+tile.getAttribute("data-i")] || {};
    open = tile;
    var media = document.getElementById("lb-media");
    media.textContent = "";
    if (a.kind === "img" || a.kind === "video") {
      var el = document.createElement(a.kind === "img" ? "img" : "video");
      el.src = a.href;
      if (a.kind === "video") { el.controls = true; el.preload = "metadata"; } else { el.alt = a.item || ""; }
      media.appendChild(el);
    } else {
      media.textContent = a.problem || "file missing";
    }
    document.getElementById("lb-note").value = "";
    fill(tile);
    lb.hidden = false;
  }
  function close() { lb.hidden = true; open = null; document.getElementById("lb-media").textContent = ""; if (cur) { cur.focus(); } }
  document.getElementById("lb-close").addEventListener("click", close);
  lb.addEventListener("click", function (ev) {
    var b = ev.target.closest && ev.target.closest("button[data-v]");
    if (b && open) { decide(open, b.getAttribute("data-v")); }
    else if (ev.target === lb || ev.target.id === "lb-media") { close(); }
  });
  document.querySelector(".sheet") && document.querySelector(".sheet").addEventListener("click", function (ev) {
    var tile = ev.target.closest && ev.target.closest(".tile");
    if (!tile) { return; }
    var b = ev.target.closest("button[data-v]");
    focusTile(tile);
    if (b) { decide(tile, b.getAttribute("data-v")); ev.preventDefault(); return; }
    if (ev.target.closest(".thumb") && !ev.target.closest("video")) { ev.preventDefault(); show(tile); }
  });

  // -- export (static page): the decisions made in this browser, for `review MANIFEST --import FILE`
  var exp = document.getElementById("export");
  if (exp) {
    exp.addEventListener("click", function () {
      var list = Object.keys(local).map(function (k) { return local[k]; });
      var blob = new Blob([JSON.stringify({ format: "photogpt-decisions", version: 1, decisions: list }, null, 1)],
        { type: "application/json" });
      var a = document.createElement("a");
      a.href = URL.createObjectURL(blob); a.download = "decisions.json";
      document.body.appendChild(a); a.click(); a.remove();
      say(list.length + " decision(s) exported");
    });
  }

  tiles.forEach(paint);
  applyFilters();
  if (tiles.length) { cur = tiles[0]; cur.tabIndex = 0; }
  body.setAttribute("data-ready", "1");
})();
