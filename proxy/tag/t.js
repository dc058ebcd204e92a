/*! analytics-proxy t.js: GA4 hits, consent first, to this script's own origin only */
(function (w, d) {
  'use strict';
  var me = d.currentScript, at = new URL(me.src), tid = at.searchParams.get('id');
  // Which optional fields the proxy's policy forwards: written in by the proxy when it serves
  // this file, so the script never sends what the policy would drop. (A string, so that a
  // minifier cannot fold it away.)
  var F = JSON.parse('{"FIELDS":0}');
  var KEY = '_ap_' + tid, DOWNLOAD = /\.(pdf|xlsx?|docx?|txt|rtf|csv|exe|key|pp[st]x?|7z|pkg|rar|gz|zip|avi|mov|mp4|mpe?g|wmv|midi?|mp3|wav|wma)$/i;
  // GA4's item fields and their keys in a pr<n> parameter.
  var ITEM = {}, names = 'id name brand category category2 category3 category4 category5 variant list_name list_id'.split(' ');
  'id nm br ca c2 c3 c4 c5 va ln li'.split(' ').forEach(function (k, i) { ITEM['item_' + names[i]] = k; });
  merge(ITEM, {price: 'pr', quantity: 'qt', coupon: 'cp', discount: 'ds', index: 'lp', affiliation: 'af', location_id: 'lo'});
  // Settings, callbacks and what the script sends in fields of its own: never event parameters.
  var SKIP = /^(send_|event_|page_|cookie_|server_c|transport_|user_id$|items$|groups$|debug_mode$|currency$|non_interaction$)/;
  // Consent: undefined until the page says, then true or false. ads: ad_storage, for gcs only.
  var consent, ads = false, held = [], queue = [], timer = 0, hits = 0, configured = false;
  var page = {}, sets = {}, user = {}, state = null, shown = d.visibilityState === 'visible' ? Date.now() : 0, engaged = 0, scrolled = false;
  var pid = Math.floor(Math.random() * 2147483647);

  function now() { return Date.now(); }
  function active() { return d.visibilityState === 'visible'; }
  // Engagement: the milliseconds the page was visible since the last event.
  function engagement() {
    var t = engaged + (shown ? now() - shown : 0);
    engaged = 0; shown = active() ? now() : 0;
    return t;
  }
  function storage() { try { return w.localStorage; } catch (e) { return null; } }
  function bridge() {
    var m = /(?:^|;\s*)analytics_consent=(granted|denied)(?:;|$)/.exec(d.cookie);
    return m ? m[1] === 'granted' : undefined;
  }

  // The visitor's id and session, in localStorage, only once analytics consent is given.
  function load() {
    var s = storage(), t = now(), first = false, fresh = false, v;
    try { v = JSON.parse(s.getItem(KEY)); } catch (e) { v = null; }
    if (!v || !v.c) {
      first = true;
      v = {c: Math.floor(Math.random() * 2147483647) + '.' + Math.floor(t / 1000), n: 0};
    }
    if (!v.s || t - v.t > 18e5) { fresh = true; v.s = Math.floor(t / 1000); v.n++; v.pv = v.et = 0; }
    v.t = t;
    state = {v: v, first: first, fresh: fresh};
    save();
  }
  function save() { try { storage().setItem(KEY, JSON.stringify(state.v)); } catch (e) { /* full */ } }
  function forget() {
    var s = storage();
    if (s) try { s.removeItem(KEY); } catch (e) { /* blocked */ }
    state = null; held = []; queue = [];
  }

  function decide(granted) {
    if (granted === undefined || granted === consent) return;
    consent = granted;
    if (!granted) return forget();
    var waiting = held;
    held = [];
    waiting.forEach(enqueue);
  }

  function event(name, params, now) {
    var e = {en: name, p: params || {}, page: page};
    if (name !== 'page_view') e.et = engagement();
    if (consent) enqueue(e);
    else if (consent === undefined) held.push(e);
    if (now) flush();
  }

  function enqueue(e) {
    if (!state) load();
    var v = state.v;
    if (state.first && F._fv) { e._fv = 1; }
    if (state.fresh && F._ss) { e._ss = 1; }
    state.first = state.fresh = false;
    if (e.en === 'page_view') v.pv++;
    v.et += e.et || 0;
    v.t = now();
    save();
    if (e.page !== (queue[0] || e).page) flush();
    queue.push(e);
    if (!timer) timer = setTimeout(flush, 1000);
  }

  function add(out, key, value) { out.push(encodeURIComponent(key) + '=' + encodeURIComponent(value)); }

  function line(e) {
    var out = [], p = e.p, k, v, i;
    add(out, 'en', e.en);
    if (e._fv) add(out, '_fv', 1);
    if (e._ss) add(out, '_ss', 1);
    if (e.et && F._et) add(out, '_et', e.et);
    if (p.currency) add(out, 'cu', p.currency);
    for (k in p) {
      v = p[k];
      if (SKIP.test(k) || v == null || typeof v === 'object' || typeof v === 'function') continue;
      add(out, (typeof v === 'number' ? 'epn.' : 'ep.') + k, v);
    }
    for (i = 0; p.items && i < p.items.length && i < 200; i++) {
      var item = p.items[i], parts = [];
      for (k in item) if (ITEM[k] && item[k] != null) parts.push(ITEM[k] + String(item[k]).replace(/~/g, ' '));
      if (parts.length) add(out, 'pr' + (i + 1), parts.join('~'));
    }
    return out.join('&');
  }

  function flush() {
    clearTimeout(timer); timer = 0;
    if (!queue.length || !consent) return;
    var batch = queue.splice(0, 25), v = state.v, pg = batch[0].page, q = [], k;
    if (queue.length) timer = setTimeout(flush, 0);
    add(q, 'v', 2); add(q, 'tid', tid); add(q, '_p', pid); add(q, 'cid', v.c);
    if (F.ul && navigator.language) add(q, 'ul', navigator.language.toLowerCase());
    if (F.sr) add(q, 'sr', screen.width + 'x' + screen.height);
    add(q, 'gcs', 'G1' + (ads ? 1 : 0) + '1');
    add(q, '_s', ++hits);
    if (F.sid) add(q, 'sid', v.s);
    if (F.sct) add(q, 'sct', v.n);
    if (F.seg) add(q, 'seg', v.pv > 1 || v.et > 1e4 ? 1 : 0);
    add(q, 'dl', pg.dl);
    if (pg.dr && F.dr) add(q, 'dr', pg.dr);
    if (pg.dt && F.dt) add(q, 'dt', pg.dt);
    if (F.up) for (k in user) add(q, (typeof user[k] === 'number' ? 'upn.' : 'up.') + k, user[k]);
    var url = at.origin + '/g/collect?' + q.join('&'), body = batch.map(line).join('\n');
    if (batch.length === 1) { url += '&' + body; body = ''; }
    // No retry: a beacon the browser could not hand over is lost rather than counted twice.
    if (!(navigator.sendBeacon && navigator.sendBeacon(url, body))) {
      try { fetch(url, {method: 'POST', body: body, keepalive: true, mode: 'no-cors', credentials: 'include'}); } catch (e) { /* gone */ }
    }
  }

  function view(params) {
    params = params || {};
    flush();
    var prev = page.dl;
    page = {dl: params.page_location || location.href, dt: params.page_title || d.title,
      dr: params.page_referrer || prev || d.referrer};
    scrolled = false;
    event('page_view', merge({}, params));
  }

  function merge(a, b) { for (var k in b) a[k] = b[k]; return a; }

  // A default is the site's, not the visitor's: "denied" (or one for some regions only)
  // leaves the events held until the visitor decides; "granted" is a site's choice to count.
  function consentCall(args) {
    var c = args[2] || {}, a = c.analytics_storage;
    if (c.region) return;
    if ('ad_storage' in c) ads = c.ad_storage === 'granted';
    if (args[1] === 'update' ? a : a === 'granted') decide(a === 'granted');
  }

  function command(args) {
    var cmd = args[0], c;
    if (cmd === 'consent') consentCall(args);
    else if (cmd === 'set') {
      if (args[1] === 'user_properties') merge(user, args[2]);
      else if (typeof args[1] === 'object') merge(sets, args[1]);
    } else if (cmd === 'config' && args[1] === tid) {
      c = args[2] || {};
      if (!configured) { configured = true; decide(bridge()); }
      if (c.send_page_view !== false) view(merge(merge({}, sets), c));
    } else if (cmd === 'event' && typeof args[1] === 'string') {
      c = args[2] || {};
      if (!c.send_to || c.send_to === tid || [].concat(c.send_to).indexOf(tid) >= 0) {
        event(args[1], merge(merge({}, sets), c), c.event_callback || c.transport_type === 'beacon');
      }
      if (typeof c.event_callback === 'function') setTimeout(c.event_callback, 0);
    }
  }

  function run(args) { if (args && typeof args.length === 'number' && typeof args[0] === 'string') command(args); }

  // Automatic measurement --------------------------------------------------------------
  function changed() { if (configured && location.href !== page.dl) view(merge({}, sets)); }
  ['pushState', 'replaceState'].forEach(function (name) {
    var original = history[name];
    // A tick later: the page sets its new title after the URL.
    history[name] = function () { var r = original.apply(this, arguments); setTimeout(changed); return r; };
  });
  w.addEventListener('popstate', changed);
  w.addEventListener('scroll', function () {
    var el = d.documentElement;
    if (!scrolled && configured && (w.scrollY + w.innerHeight) >= el.scrollHeight * 0.9) {
      scrolled = true;
      event('scroll', {percent_scrolled: 90});
    }
  }, {passive: true});
  d.addEventListener('click', function (ev) {
    var a = ev.target && ev.target.closest && ev.target.closest('a[href]'), u, file;
    if (!a || !configured) return;
    try { u = new URL(a.href, location.href); } catch (e) { return; }
    if (!/^https?:$/.test(u.protocol)) return;
    file = DOWNLOAD.exec(u.pathname);
    var p = {link_id: a.id, link_classes: a.className, link_url: u.href};
    if (file) {
      event('file_download', merge(p, {file_extension: file[1].toLowerCase(),
        file_name: u.pathname, link_text: (a.textContent || '').trim().slice(0, 100)}), true);
    } else if (u.hostname !== location.hostname) {
      event('click', merge(p, {link_domain: u.hostname, outbound: 'true'}), true);
    }
  }, true);
  function hidden() {
    if (d.visibilityState === 'hidden' && configured) {
      engaged = engagement();
      if (engaged > 0) event('user_engagement', {}, true); else flush();
    }
  }
  d.addEventListener('visibilitychange', function () {
    if (active()) shown = shown || now(); else hidden();
  });
  w.addEventListener('pagehide', function () { hidden(); held = []; });

  // The gtag API: what was queued before this script loaded, then every later call.
  var dl = w.dataLayer = w.dataLayer || [];
  dl.forEach(run);
  var push = dl.push;
  dl.push = function () {
    var r = push.apply(dl, arguments);
    for (var i = 0; i < arguments.length; i++) run(arguments[i]);
    return r;
  };
  setInterval(function () { if (configured) decide(bridge()); }, 500);
})(window, document);
