/* Browser tracker for the ingest service, served by it at GET /tracker.js. No dependencies, no build step.
 *
 *   <script src="https://ingest.example.com/tracker.js" data-key="WRITE_KEY" defer></script>
 *
 * Sends page_view on load and on single-page-app navigations (history API), and exposes
 * window.ingest.track(name, properties), .identify(userId), .reset() and .flush().
 * Events are batched (up to 500, sent every few seconds) with fetch keepalive, and with sendBeacon when the
 * page is hidden or closed. Each batch carries an idempotency key of its own in the query string (a beacon cannot
 * set headers); a resend is the same body with the same key, so the service stores it once. 503/429/409 or no
 * answer: waits (Retry-After) and resends. Other refusals: logged once, dropped.
 * It never throws into the page. docs/api.md ("Send events") says why it works this way.
 */
(function () {
  "use strict";
  var w = window, d = document, nav = navigator;
  if (w.ingest && w.ingest.loaded) return; // included twice: the first copy does the work

  var EVENTS = ["page_view", "button_click", "signup_started", "email_verified", "signup_completed", "feature_used",
                "error_occurred"];
  var MAX_BATCH = 500;               // the service's limit per request
  var MAX_BYTES = 60000;             // browsers allow 64 KiB of beacons and keepalive bodies in flight
  var FLUSH_MS = 3000;               // a partial batch waits at most this long
  var IDLE_MS = 30 * 60 * 1000;      // a session ends after 30 minutes without events
  var MAX_QUEUE = 2000;              // events held while the service cannot take them; beyond, the oldest go
  var MAX_WAIT_MS = 60000;           // longest wait before a resend
  var ID = /^[!-~]{1,128}$/;         // the service's rule for session and user ids

  var script = d.currentScript || d.querySelector('script[src*="tracker.js"]');
  var src = (script && script.src) || "";
  var base = (script && script.getAttribute("data-api")) || src.replace(/tracker\.js([?#].*)?$/, "");
  if (base.slice(-1) !== "/") base += "/";
  var key = script && script.getAttribute("data-key");
  var url = base + "events" + (key ? "?key=" + encodeURIComponent(key) : "");

  var queue = [];          // {t: client clock ms, e: event without timestamp}, oldest first
  var retry = null;        // a batch sent without a final answer: resent as it is, key and all, before any other
  var sending = false, synced = false, probing = false;
  var waitUntil = 0, failures = 0;
  var warned = {};
  var memory = {};         // where values live when sessionStorage cannot be used (sandboxed frames)

  function warn(once, message, detail) {
    if (warned[once]) return;
    warned[once] = true;
    try { console.warn("ingest: " + message, detail === undefined ? "" : detail); } catch (e) { /* no console */ }
  }

  function safe(fn) { // the page's code must never see an exception from here
    return function () {
      try { return fn.apply(this, arguments); } catch (e) { warn("internal", "internal error (ignored)", e); }
    };
  }

  function load(name) {
    try { var v = w.sessionStorage.getItem("ingest." + name); if (v !== null) return v; } catch (e) { /* unavailable */ }
    return memory[name] === undefined ? null : memory[name];
  }

  function save(name, value) {
    memory[name] = value;
    try {
      if (value === null) w.sessionStorage.removeItem("ingest." + name);
      else w.sessionStorage.setItem("ingest." + name, value);
    } catch (e) { /* memory only */ }
  }

  // The service's clock minus ours, in ms: timestamps are stamped in the service's time.
  var offset = +load("offset") || 0;

  function randomId(prefix) {
    var bytes = new Uint8Array(12), out = prefix || "s-";
    if (w.crypto && w.crypto.getRandomValues) w.crypto.getRandomValues(bytes);
    else for (var i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
    for (var j = 0; j < bytes.length; j++) out += (bytes[j] + 256).toString(16).slice(1);
    return out;
  }

  function session(now) { // the tab's session id, renewed after IDLE_MS without events
    var id = load("session"), last = +load("last") || 0;
    if (!id || now - last > IDLE_MS) id = randomId();
    save("session", id);
    save("last", String(now));
    return id;
  }

  function deviceType() {
    var ua = nav.userAgent || "";
    if (/bot|crawl|spider|headless|lighthouse/i.test(ua)) return "other";
    if (/iPad|Tablet|PlayBook|Silk|Kindle/i.test(ua) || (/Android/i.test(ua) && !/Mobile/i.test(ua)) ||
        (/Macintosh/.test(ua) && nav.maxTouchPoints > 1)) return "tablet"; // iPadOS says it is a Mac
    if ((nav.userAgentData && nav.userAgentData.mobile) || /Mobi|iPhone|iPod|Android|Windows Phone/i.test(ua)) {
      return "mobile";
    }
    return "desktop";
  }
  var DEVICE = deviceType();

  function enqueue(name, properties) {
    var now = Date.now();
    queue.push({t: now, e: {event_name: name, session_id: session(now), user_id: load("user"),
                            device_type: DEVICE, properties: properties}});
    if (queue.length > MAX_QUEUE) {
      queue.shift();
      warn("dropped", "the service has not taken events for a while; dropping the oldest (at most " +
           MAX_QUEUE + " wait)");
    }
    if (queue.length >= MAX_BATCH) flush();
  }

  function bytes(text) {
    return w.TextEncoder ? new TextEncoder().encode(text).length : unescape(encodeURIComponent(text)).length;
  }

  function take() { // the oldest events that fit one request, out of the queue: {items, body}
    var items = [], texts = [], size = 2;
    while (queue.length && items.length < MAX_BATCH) {
      var item = queue[0], e = item.e;
      var text = JSON.stringify({event_name: e.event_name, timestamp: new Date(item.t + offset).toISOString(),
                                 session_id: e.session_id, user_id: e.user_id, device_type: e.device_type,
                                 properties: e.properties});
      var n = bytes(text) + 1;
      if (items.length && size + n > MAX_BYTES) break;
      items.push(queue.shift());
      texts.push(text);
      size += n;
    }
    return {items: items, body: "[" + texts.join(",") + "]", key: randomId("b-")};
  }

  function next() { // the batch to send: the unanswered one first, unchanged
    var batch = retry || take();
    retry = null;
    return batch;
  }

  function target(batch) {
    return url + (url.indexOf("?") < 0 ? "?" : "&") + "idempotency_key=" + batch.key;
  }

  function sync(response, sentAt) { // the offset from the service's Server-Time, halfway through the round trip
    var server = +response.headers.get("Server-Time");
    if (server > 0) {
      offset = Math.round(server - (sentAt + Date.now()) / 2);
      save("offset", String(offset));
    }
    synced = true;
  }

  function later(seconds) { // wait before the next try: Retry-After when the service said, else back off
    failures++;
    var ms = seconds >= 0 ? seconds * 1000 : 1000 * Math.pow(2, Math.min(failures - 1, 6));
    ms = Math.min(ms, MAX_WAIT_MS);
    waitUntil = Date.now() + ms;
    setTimeout(safe(flush), ms + 10);
  }

  function unreachable() {
    warn("unreachable", "cannot reach " + base + " (is it up, and is this site's origin in INGEST_CORS_ORIGINS?); " +
         "will retry");
    later(-1);
  }

  function probe() { // read the service's clock before stamping anything: events made before it wait for it
    if (probing) return;
    probing = true;
    var sentAt = Date.now();
    fetch(base + "time", {cache: "no-store", credentials: "omit"}).then(function (response) {
      sync(response, sentAt);
      failures = 0;
      probing = false;
      flush();
    }, function () {
      probing = false;
      unreachable();
    }).catch(function () { probing = false; });
  }

  function refused(status, answer, items) { // logged once per kind of refusal; the events are dropped
    answer = answer || {};
    var rejected = answer.rejected || [];
    for (var i = 0; i < rejected.length; i++) {
      var errors = rejected[i].errors || [], event = items[rejected[i].index];
      var words = errors.map(function (x) { return (x.path || "/") + ": " + x.message; }).join("; ");
      warn("rejected " + (event && event.e.event_name) + " " + words,
           "the service refused a " + (event ? event.e.event_name : "") + " event: " + words, event && event.e);
    }
    if (!rejected.length && status >= 400) {
      warn("refused " + status + " " + answer.error, "the service refused " + items.length + " event(s): " + status +
           " " + (answer.error || "") + ": " + (answer.message || ""));
    }
  }

  function flush() {
    if (sending || !(retry || queue.length) || Date.now() < waitUntil || !w.fetch) return;
    if (!synced) return probe();
    var batch = next(), sentAt = Date.now();
    sending = true;
    var done = function () {
      sending = false;
      if (queue.length >= MAX_BATCH) flush();
    };
    var resend = function (seconds) {
      retry = batch;
      later(seconds);
    };
    // text/plain: a simple request, so no preflight; the keys travel in the query, as with sendBeacon.
    fetch(target(batch), {method: "POST", body: batch.body, keepalive: bytes(batch.body) <= MAX_BYTES, credentials: "omit",
                headers: {"Content-Type": "text/plain;charset=UTF-8"}}).then(function (response) {
      sync(response, sentAt);
      var status = response.status;
      if (status === 429 || status === 409 || status >= 500) {
        var after = response.headers.get("Retry-After");
        resend(after !== null && after !== "" && +after >= 0 ? +after : -1);
        return;
      }
      failures = 0;
      if (status >= 300 || status === 202) {
        return response.json().then(function (answer) { refused(status, answer, batch.items); },
                                    function () { refused(status, null, batch.items); });
      }
    }, function () {
      retry = batch; // the service may have taken it: the same key lets it say so instead of storing it twice
      unreachable();
    }).then(done, done);
  }

  function leave() { // hidden or closing: hand everything waiting to the browser, which sends it after we are gone
    while (retry || queue.length) {
      var batch = next(), sent = false;
      try { sent = !!(nav.sendBeacon && nav.sendBeacon(target(batch), batch.body)); } catch (e) { sent = false; }
      if (!sent) {
        try {
          fetch(target(batch), {method: "POST", body: batch.body, keepalive: true, credentials: "omit"})
            .catch(function () {});
          sent = true;
        } catch (e) { sent = false; }
      }
      if (!sent) { retry = batch; return; }
    }
  }

  var lastPath = null, lastUrl = null;

  function pageView() {
    var path = location.pathname;
    if (path === lastPath) return; // only a new path is a new page (not a query or a hash change)
    var properties = {path: path.slice(0, 1024)};
    if (d.title) properties.title = d.title.slice(0, 1024);
    var referrer = lastUrl === null ? d.referrer : lastUrl;
    if (referrer) properties.referrer = referrer.slice(0, 1024);
    lastPath = path;
    lastUrl = location.href;
    enqueue("page_view", properties);
  }

  function track(name, properties) {
    if (EVENTS.indexOf(name) < 0) {
      warn("name " + name, "track(" + JSON.stringify(String(name)) + ") not sent: the service takes only " +
           EVENTS.join(", ") + ". Put the detail in properties, e.g. track(\"feature_used\", {feature: \"export\"})");
      return false;
    }
    if (properties !== undefined && properties !== null &&
        (typeof properties !== "object" || Array.isArray(properties))) {
      warn("properties " + name, "track(\"" + name + "\", properties) not sent: properties must be an object");
      return false;
    }
    var copy;
    try { copy = JSON.parse(JSON.stringify(properties || {})); } catch (e) { // cycles, BigInt
      warn("json " + name, "track(\"" + name + "\", properties) not sent: properties cannot be written as JSON", e);
      return false;
    }
    enqueue(name, copy);
    return true;
  }

  function identify(userId) {
    var id = userId === null || userId === undefined ? "" : String(userId);
    if (!ID.test(id)) {
      warn("identify " + id, "identify(" + JSON.stringify(id) + ") ignored: a user id is 1 to 128 printable ASCII " +
           "characters without spaces");
      return false;
    }
    save("user", id);
    return true;
  }

  function reset() { // logout: later events are anonymous, in a new session
    save("user", null);
    save("session", null);
  }

  var before = w.ingest;
  var api = w.ingest = {track: safe(track), identify: safe(identify), reset: safe(reset), flush: safe(flush),
                        loaded: true};

  safe(function () {
    ["pushState", "replaceState"].forEach(function (name) {
      var original = history[name];
      if (typeof original !== "function") return;
      history[name] = function () {
        var result = original.apply(this, arguments);
        safe(pageView)();
        return result;
      };
    });
    w.addEventListener("popstate", safe(pageView));
    d.addEventListener("visibilitychange", safe(function () { if (d.visibilityState === "hidden") leave(); }));
    w.addEventListener("pagehide", safe(leave));
    setInterval(safe(flush), FLUSH_MS);
    pageView();
    // Calls made before this script ran, through the stub in docs/api.md: window.ingest.q = [[name, args], ...]
    var early = (before && before.q) || [];
    for (var i = 0; i < early.length; i++) {
      if (api[early[i][0]]) api[early[i][0]].apply(api, early[i][1]);
    }
    flush();
  })();
})();
