// Killswitch console: countdowns, buttons that post with the session's CSRF token, and
// live updates (server-sent events) that fetch the page again and swap its content.
(function () {
  'use strict';
  var body = document.body;
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute('content') : '';
  var skew = Date.parse(body.getAttribute('data-now')) - Date.now();
  if (isNaN(skew)) { skew = 0; }

  function fmt(s) {
    var m = Math.floor(s / 60);
    return (m ? m + ' min ' : '') + (s % 60) + ' s';
  }
  function tick() {
    var els = document.querySelectorAll('[data-deadline]');
    for (var i = 0; i < els.length; i++) {
      var ms = Date.parse(els[i].getAttribute('data-deadline')) - (Date.now() + skew);
      var s = Math.max(0, Math.ceil(ms / 1000));
      els[i].textContent = fmt(s);
      els[i].classList.toggle('due', s === 0);
    }
  }
  setInterval(tick, 250);
  tick();

  function flash(text, isError) {
    var f = document.getElementById('flash');
    if (!f) { return; }
    f.textContent = '';
    var p = document.createElement('p');
    p.textContent = text;
    if (isError) { p.className = 'error'; }
    f.appendChild(p);
  }

  // refresh fetches the page again and swaps #content (debounced; one at a time).
  var timer = null, inflight = false, again = false;
  window.ksRefreshes = 0;
  function refresh() {
    if (timer) { return; }
    timer = setTimeout(function () {
      timer = null;
      if (inflight) { again = true; return; }
      inflight = true;
      fetch(location.href, { headers: { 'X-Console-Refresh': '1' }, credentials: 'same-origin', cache: 'no-store' })
        .then(function (r) {
          if (r.status === 401) { location.reload(); return null; }
          return r.text();
        })
        .then(function (html) {
          if (html === null) { return; }
          var doc = new DOMParser().parseFromString(html, 'text/html');
          var fresh = doc.getElementById('content'), old = document.getElementById('content');
          if (fresh && old) {
            old.replaceWith(document.adoptNode(fresh));
            ['nav-approvals'].forEach(function (id) {
              var a = doc.getElementById(id), b = document.getElementById(id);
              if (a && b) { b.innerHTML = a.innerHTML; }
            });
            window.ksRefreshes++;
            body.setAttribute('data-refreshed-at', String(Date.now()));
            tick();
          }
        })
        .catch(function () { /* the next event or reload retries */ })
        .then(function () {
          inflight = false;
          if (again) { again = false; refresh(); }
        });
    }, 80);
  }
  window.ksRefresh = refresh;

  // Forms marked data-fetch="yes" post with the CSRF header and refresh in place.
  document.addEventListener('submit', function (ev) {
    var f = ev.target;
    if (!f || f.getAttribute('data-fetch') !== 'yes') { return; }
    ev.preventDefault();
    var btns = f.querySelectorAll('button');
    for (var i = 0; i < btns.length; i++) { btns[i].disabled = true; }
    fetch(f.getAttribute('action'), {
      method: 'POST', credentials: 'same-origin',
      headers: { 'X-CSRF-Token': csrf, 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams(new FormData(f)).toString()
    }).then(function (r) {
      return r.text().then(function (t) {
        flash(r.ok ? (f.getAttribute('action').split('/').pop() + ': ' + t.trim()) : (r.status + ': ' + t.trim()), !r.ok);
        for (var i = 0; i < btns.length; i++) { btns[i].disabled = false; }
        refresh();
      });
    }).catch(function (e) { flash(String(e), true); });
  });

  // Live updates: every service event refreshes the page.
  window.ksEvents = [];
  var src = body.getAttribute('data-live');
  if (src && window.EventSource) {
    var live = document.getElementById('live');
    var es = new EventSource(src);
    es.onopen = function () { if (live) { live.classList.add('on'); } body.setAttribute('data-live-state', 'open'); };
    es.onerror = function () { if (live) { live.classList.remove('on'); } };
    es.onmessage = function (m) {
      var d = {};
      try { d = JSON.parse(m.data); } catch (e) { return; }
      d.received = Date.now();
      window.ksEvents.push(d);
      if (window.ksEvents.length > 200) { window.ksEvents.shift(); }
      refresh();
    };
  }
}());
