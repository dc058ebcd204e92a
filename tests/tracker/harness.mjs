// A page for the tracker to run in: just enough of window, document and navigator, all
// recorded, with a clock and timers the test moves by hand. Pure logic: the real browser is
// tests/tag/test_tracker_browser.py's.
import { readFileSync } from 'node:fs';
import vm from 'node:vm';

const ROOT = new URL('../../proxy/tag/', import.meta.url);
export const BUILDS = { source: 't.js', minified: 't.min.js' };
export const STRICT = { _fv: 1, _ss: 1, _et: 1, sid: 1, seg: 1, ul: 1, dr: 1, dt: 1 };
export const BALANCED = { ...STRICT, sct: 1, sr: 1, up: 1 };

export function script(build, fields = STRICT) {
  const text = readFileSync(new URL(BUILDS[build], ROOT), 'utf8');
  const marker = '{"FIELDS":0}';
  if (text.split(marker).length !== 2) throw new Error(`${build}: no single fields marker`);
  return text.replace(marker, JSON.stringify(fields));
}

class Listeners {
  constructor() { this.map = {}; }
  addEventListener(type, fn) { (this.map[type] ||= []).push(fn); }
  dispatch(type, event = {}) { for (const fn of this.map[type] || []) fn(event); }
}

// A parsed request the page sent: its query and one object per body line.
function parse(url, body) {
  const u = new URL(url);
  const query = Object.fromEntries(u.searchParams);
  const lines = (body || '').split('\n').filter(Boolean).map((l) => Object.fromEntries(new URLSearchParams(l)));
  const events = lines.length ? lines.map((l) => ({ ...query, ...l })) : [query];
  return { url, origin: u.origin, path: u.pathname, query, body: body || '', events };
}

export class Page {
  constructor({ build = 'source', fields = STRICT, src = 'https://stats.example.com/t.js?id=G-TEST1234',
    href = 'https://www.example.com/home?x=1', title = 'Home', cookie = '', beacon = true,
    visible = true } = {}) {
    this.now = 1_800_000_000_000;
    this.timers = [];
    this.sent = [];        // every request, by sendBeacon or fetch
    this.fetches = 0;
    this.beaconResult = beacon;
    this.store = new Map();
    this.cookie = cookie;
    const page = this;
    const win = new Listeners();
    const doc = new Listeners();
    const location = new URL(href);
    doc.currentScript = { src };
    doc.title = title;
    doc.referrer = '';
    doc.visibilityState = visible ? 'visible' : 'hidden';
    Object.defineProperty(doc, 'cookie', { get: () => page.cookie });
    doc.documentElement = { scrollHeight: 4000 };
    const history = {
      pushState(state, unused, url) { page.navigate(url); },
      replaceState(state, unused, url) { page.navigate(url); },
    };
    this.location = location;
    const localStorage = {
      getItem: (k) => (page.store.has(k) ? page.store.get(k) : null),
      setItem: (k, v) => { page.store.set(k, String(v)); },
      removeItem: (k) => { page.store.delete(k); },
    };
    const navigator = {
      language: 'en-GB',
      sendBeacon: (url, body) => {
        if (!page.beaconResult) return false;
        page.sent.push({ ...parse(url, body), by: 'beacon' });
        return true;
      },
    };
    const fetch = (url, init) => {
      page.fetches++;
      page.sent.push({ ...parse(url, init.body), by: 'fetch', init });
      return Promise.resolve({ status: 204 });
    };
    const DateClass = class extends Date {
      constructor(...args) { super(...(args.length ? args : [page.now])); }
      static now() { return page.now; }
    };
    const context = {
      URL, URLSearchParams, JSON, Math, String, Object, Array, RegExp, encodeURIComponent,
      Date: DateClass,
      document: doc, navigator, localStorage, history, fetch,
      screen: { width: 1512, height: 982 },
      scrollY: 0, innerHeight: 800,
      setTimeout: (fn, ms = 0) => { page.timers.push({ at: page.now + ms, fn }); return page.timers.length; },
      clearTimeout: (id) => { if (id && page.timers[id - 1]) page.timers[id - 1].fn = null; },
      setInterval: (fn, ms) => { page.interval = { fn, ms }; return 1; },
    };
    context.window = context;
    context.addEventListener = win.addEventListener.bind(win);
    Object.defineProperty(context, 'location', { get: () => page.location });
    this.win = win;
    this.doc = doc;
    this.context = vm.createContext(context);
    this.code = script(build, fields);
  }

  // The page's own code: the snippet's stub, then whatever it calls.
  run(code) { return vm.runInContext(code, this.context); }
  gtag(...args) { this.context.dataLayer.push(args); }
  stub() { this.run('window.dataLayer = window.dataLayer || []; function gtag(){ dataLayer.push(arguments); }'); }
  load() { this.run(this.code); }

  navigate(url) { this.location = new URL(url, this.location.href); }

  // Time passes: due timers run, the bridge cookie is polled.
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      const due = this.timers.filter((t) => t.fn && t.at <= end).sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      this.now = Math.max(this.now, due.at);
      const fn = due.fn; due.fn = null; fn();
    }
    if (this.interval) {
      for (let t = this.now; t + this.interval.ms <= end; t += this.interval.ms) this.interval.fn();
    }
    this.now = end;
  }

  scrollToEnd() { this.context.scrollY = 3300; this.win.dispatch('scroll'); }
  click(a) {
    const anchor = { id: a.id || '', className: a.className || '', href: a.href, textContent: a.text || '' };
    const target = { closest: () => anchor };
    this.doc.dispatch('click', { target });
  }
  hide() { this.doc.visibilityState = 'hidden'; this.doc.dispatch('visibilitychange'); }
  show() { this.doc.visibilityState = 'visible'; this.doc.dispatch('visibilitychange'); }
  unload() { this.hide(); this.win.dispatch('pagehide'); }

  events() { return this.sent.flatMap((r) => r.events); }
  names() { return this.events().map((e) => e.en); }
}
