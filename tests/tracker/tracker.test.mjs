// The tracker's logic (proxy/tag/t.js, and its minified build t.min.js, which the proxy
// serves), run by node's own test runner: `node --test tests/tracker/`.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { BALANCED, BUILDS, Page, STRICT } from './harness.mjs';

const ID = 'G-TEST1234';
const KEY = `_ap_${ID}`;

// The snippet as the README gives it, with the site's consent default before it.
function landing(options = {}, { consentDefault = true } = {}) {
  const page = new Page(options);
  page.stub();
  if (consentDefault) page.gtag('consent', 'default', { analytics_storage: 'denied', ad_storage: 'denied' });
  page.gtag('js', new Date());
  page.gtag('config', ID);
  page.load();
  return page;
}

const grant = (page) => page.gtag('consent', 'update', { analytics_storage: 'granted' });
const deny = (page) => page.gtag('consent', 'update', { analytics_storage: 'denied' });

for (const build of Object.keys(BUILDS)) {
  describe(`t.js (${build})`, () => {
    test('before any decision: nothing sent, nothing stored', () => {
      const page = landing({ build });
      page.scrollToEnd();
      page.gtag('event', 'sign_up', { method: 'newsletter' });
      page.advance(5000);
      page.hide();
      assert.deepEqual(page.sent, []);
      assert.equal(page.store.size, 0);
    });

    test("the landing page's events are sent once the visitor accepts", () => {
      const page = landing({ build });
      page.advance(3000);
      page.scrollToEnd();
      grant(page);
      page.advance(1000);
      assert.deepEqual(page.names(), ['page_view', 'scroll']);
      const [request] = page.sent;
      assert.equal(request.origin, 'https://stats.example.com');
      assert.equal(request.path, '/g/collect');
      assert.equal(request.query.tid, ID);
      assert.equal(request.query.gcs, 'G101');
      const stored = JSON.parse(page.store.get(KEY));
      assert.equal(request.query.cid, stored.c);
      assert.match(stored.c, /^\d+\.\d+$/);
      const [view, scroll] = page.events();
      assert.equal(view._fv, '1');
      assert.equal(view._ss, '1');
      assert.equal(view.dl, 'https://www.example.com/home?x=1');
      assert.equal(view.dt, 'Home');
      assert.equal(scroll['epn.percent_scrolled'], '90');
      assert.equal(scroll._et, '3000');
    });

    test('refused: the held events are discarded, nothing stored, nothing sent later', () => {
      const page = landing({ build });
      deny(page);
      page.scrollToEnd();
      page.gtag('event', 'purchase', { value: 3 });
      page.advance(5000);
      page.unload();
      assert.deepEqual(page.sent, []);
      assert.equal(page.store.size, 0);
    });

    test('leaving before deciding discards the held events', () => {
      const page = landing({ build });
      page.unload();
      grant(page);
      page.advance(2000);
      assert.deepEqual(page.names().filter((n) => n !== 'user_engagement'), []);
    });

    test('a withdrawal removes the stored id and stops sending', () => {
      const page = landing({ build });
      grant(page);
      page.advance(1000);
      assert.ok(page.store.has(KEY));
      deny(page);
      assert.equal(page.store.size, 0);
      page.gtag('event', 'sign_up');
      page.scrollToEnd();
      page.advance(5000);
      page.unload();
      assert.deepEqual(page.names(), ['page_view']);
    });

    test("a site's default of granted counts; a region's default waits", () => {
      const site = landing({ build }, { consentDefault: false });
      site.gtag('consent', 'default', { analytics_storage: 'granted' });
      site.advance(1000);
      assert.deepEqual(site.names(), ['page_view']);
      site.gtag('event', 'sign_up');
      site.advance(1000);
      assert.deepEqual(site.names(), ['page_view', 'sign_up']);

      const regional = new Page({ build });
      regional.stub();
      regional.gtag('consent', 'default', { analytics_storage: 'granted', region: ['US'] });
      regional.gtag('config', ID);
      regional.load();
      regional.advance(2000);
      assert.deepEqual(regional.sent, []);
    });

    test('the bridge cookie decides too, either way', () => {
      const granted = landing({ build, cookie: 'a=1; analytics_consent=granted' });
      granted.advance(1000);
      assert.deepEqual(granted.names(), ['page_view']);

      const refused = landing({ build });
      refused.cookie = 'analytics_consent=denied';
      refused.advance(1000);  // polled
      grant(refused);  // a Consent Mode grant after the cookie's denial
      refused.advance(1000);
      assert.equal(refused.store.size, 0);
      refused.advance(1000);  // the cookie still says denied
      assert.equal(refused.store.size, 0);
    });

    test('events within a second go as one request, one line each', () => {
      const page = landing({ build });
      grant(page);
      page.gtag('event', 'sign_up', { method: 'newsletter' });
      page.gtag('event', 'purchase', {
        transaction_id: 'T-1', value: 25.5, currency: 'GBP',
        items: [{ item_id: 'SKU-1', item_name: 'A~B', price: 25.5, quantity: 2 }, { item_id: 'SKU-2' }],
      });
      page.advance(1000);
      assert.equal(page.sent.length, 1);
      const [request] = page.sent;
      assert.equal(request.query.en, undefined);
      assert.equal(request.body.split('\n').length, 3);
      const purchase = page.events()[2];
      assert.equal(purchase.en, 'purchase');
      assert.equal(purchase['ep.transaction_id'], 'T-1');
      assert.equal(purchase['epn.value'], '25.5');
      assert.equal(purchase.cu, 'GBP');
      assert.equal(purchase['ep.currency'], undefined);
      assert.equal(purchase.pr1, 'idSKU-1~nmA B~pr25.5~qt2');
      assert.equal(purchase.pr2, 'idSKU-2');
      assert.equal(page.events()[1]['ep.method'], 'newsletter');
    });

    test('one event: its parameters in the query, no body', () => {
      const page = landing({ build }, { consentDefault: false });
      page.gtag('consent', 'update', { analytics_storage: 'granted' });
      page.advance(1000);
      assert.equal(page.sent.length, 1);
      assert.equal(page.sent[0].query.en, 'page_view');
      assert.equal(page.sent[0].body, '');
    });

    test('sendBeacon refused: fetch with keepalive, once, never retried', () => {
      const page = landing({ build, beacon: false });
      grant(page);
      page.advance(1000);
      assert.equal(page.fetches, 1);
      assert.equal(page.sent[0].by, 'fetch');
      assert.equal(page.sent[0].init.keepalive, true);
      assert.equal(page.sent[0].init.method, 'POST');
      page.advance(60000);
      assert.equal(page.fetches, 1);
    });

    test('only the fields the policy forwards are sent', () => {
      const strict = landing({ build, fields: STRICT });
      grant(strict);
      strict.gtag('set', 'user_properties', { plan: 'pro' });
      strict.gtag('event', 'sign_up');
      strict.advance(1000);
      for (const key of ['sct', 'sr', 'up.plan', 'uid', 'user_id']) {
        assert.ok(!strict.events().some((e) => key in e), key);
      }
      const balanced = landing({ build, fields: BALANCED });
      grant(balanced);
      balanced.gtag('set', 'user_properties', { plan: 'pro' });
      balanced.gtag('event', 'sign_up');
      balanced.advance(1000);
      const event = balanced.events().at(-1);
      assert.equal(event.sct, '1');
      assert.equal(event.sr, '1512x982');
      assert.equal(event['up.plan'], 'pro');
      const none = landing({ build, fields: {} });
      grant(none);
      none.advance(1000);
      for (const key of ['sid', 'seg', 'ul', 'dt', '_fv', '_ss']) {
        assert.ok(!(key in none.events()[0]), key);
      }
    });

    test("the site's calls: send_to, event_callback, send_page_view, user_id never sent", () => {
      const page = new Page({ build });
      page.stub();
      page.gtag('consent', 'default', { analytics_storage: 'granted' });
      page.gtag('config', ID, { send_page_view: false, user_id: 'jane@example.com' });
      page.load();
      let called = 0;
      page.gtag('event', 'other', { send_to: 'G-ELSEWHERE' });
      page.gtag('event', 'mine', { send_to: ID, event_callback: () => { called++; } });
      page.advance(1000);
      assert.equal(called, 1);
      assert.deepEqual(page.names(), ['mine']);
      assert.ok(!JSON.stringify(page.sent).includes('jane'));
    });

    test('a history change is a page_view with the previous page as referrer', () => {
      const page = landing({ build });
      grant(page);
      page.run("history.pushState({}, '', '/second'); document.title = 'Second'");
      page.advance(1000);
      const views = page.events().filter((e) => e.en === 'page_view');
      assert.equal(views.length, 2);
      assert.equal(views[1].dl, 'https://www.example.com/second');
      assert.equal(views[1].dr, 'https://www.example.com/home?x=1');
      assert.equal(views[1].dt, 'Second');
      page.run("history.replaceState({}, '', '/second')");  // the same address: no new view
      page.advance(1000);
      assert.equal(page.names().filter((n) => n === 'page_view').length, 2);
    });

    test('scroll at 90 % once per page; outbound clicks and downloads; inner links nothing', () => {
      const page = landing({ build });
      grant(page);
      page.scrollToEnd();
      page.scrollToEnd();
      page.click({ href: 'https://www.example.com/about' });
      page.click({ id: 'dl', href: 'https://www.example.com/files/Brochure.PDF', text: ' Brochure ' });
      page.click({ href: 'https://elsewhere.example.org/x?y=1' });
      page.click({ href: 'mailto:someone@example.com' });
      page.advance(1000);
      assert.deepEqual(page.names(), ['page_view', 'scroll', 'file_download', 'click']);
      const [, , download, click] = page.events();
      assert.equal(download['ep.file_extension'], 'pdf');
      assert.equal(download['ep.file_name'], '/files/Brochure.PDF');
      assert.equal(download['ep.link_text'], 'Brochure');
      assert.equal(click['ep.link_domain'], 'elsewhere.example.org');
      assert.equal(click['ep.outbound'], 'true');
      assert.equal(click['ep.link_url'], 'https://elsewhere.example.org/x?y=1');
    });

    test('hidden: user_engagement with the visible time, sent at once', () => {
      const page = landing({ build });
      grant(page);
      page.advance(1000);
      page.advance(4000);
      page.hide();
      const last = page.events().at(-1);
      assert.equal(last.en, 'user_engagement');
      assert.equal(last._et, '5000');
      page.advance(60000);  // hidden time is not engagement
      page.show();
      page.advance(2000);
      page.hide();
      assert.equal(page.events().at(-1)._et, '2000');
    });

    test('a returning visitor: the same id, a new session after 30 minutes', () => {
      const first = landing({ build });
      grant(first);
      first.advance(1000);
      const stored = first.store;
      const again = new Page({ build });
      again.store = new Map(stored);
      again.now = first.now + 31 * 60 * 1000;
      again.stub();
      again.gtag('consent', 'update', { analytics_storage: 'granted' });
      again.gtag('config', ID);
      again.load();
      again.advance(1000);
      const [before, after] = [first.events()[0], again.events()[0]];
      assert.equal(after.cid, before.cid);
      assert.equal(after._fv, undefined);
      assert.equal(after._ss, '1');
      assert.notEqual(after.sid, before.sid);
    });

    test('calls queued before the script loaded, and an unrelated dataLayer object', () => {
      const page = new Page({ build });
      page.stub();
      page.run("dataLayer.push({event: 'gtm.js'})");
      page.gtag('consent', 'update', { analytics_storage: 'granted' });
      page.gtag('config', ID);
      page.gtag('event', 'early');
      page.load();
      page.gtag('event', 'late');
      page.advance(1000);
      assert.deepEqual(page.names(), ['page_view', 'early', 'late']);
    });
  });
}
