// Consent Mode defaults first, then the real consent manager (vanilla-cookieconsent 3.1.0)
// turning the visitor's choice into a Consent Mode update. Loaded before gtag.js.
window.dataLayer = window.dataLayer || [];
function gtag() { dataLayer.push(arguments); }
gtag('consent', 'default', {
  analytics_storage: 'denied', ad_storage: 'denied',
  ad_user_data: 'denied', ad_personalization: 'denied',
  // A returning visitor's stored choice arrives at DOMContentLoaded: gtag holds its hits
  // until then instead of sending the page_view as denied.
  wait_for_update: 500
});

function updateConsent() {
  gtag('consent', 'update', {
    analytics_storage: CookieConsent.acceptedCategory('analytics') ? 'granted' : 'denied'
  });
}

window.addEventListener('DOMContentLoaded', function () {
  CookieConsent.run({
    hideFromBots: false,  // the test's Chromium is automated: show the banner anyway
    categories: { necessary: { enabled: true, readOnly: true }, analytics: {} },
    onConsent: updateConsent,
    onChange: updateConsent,
    language: {
      default: 'en',
      translations: {
        en: {
          consentModal: {
            title: 'Cookies',
            description: 'Statistics help us improve this site.',
            acceptAllBtn: 'Accept all',
            acceptNecessaryBtn: 'Reject all'
          },
          preferencesModal: {
            title: 'Cookie preferences',
            acceptAllBtn: 'Accept all',
            acceptNecessaryBtn: 'Reject all',
            sections: [
              { title: 'Necessary', linkedCategory: 'necessary' },
              { title: 'Statistics', linkedCategory: 'analytics' }
            ]
          }
        }
      }
    }
  });
});
