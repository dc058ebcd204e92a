"""UserAgentGeneraliser: canonical UAs that parse as the same browser, major and OS."""

from __future__ import annotations

import pytest
import ua_parser
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.sanitize.useragent import GENERIC, GeneralisedAgent, UserAgentGeneraliser

GENERALISER = UserAgentGeneraliser()

# Real User-Agent strings, one per browser family and platform the proxy rebuilds.
BROWSERS = {
    "chrome-windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
                      "Gecko) Chrome/122.0.6261.69 Safari/537.36",
    "chrome-windows7": "Mozilla/5.0 (Windows NT 6.1; Win64; x64) AppleWebKit/537.36 (KHTML, like "
                       "Gecko) Chrome/109.0.5414.120 Safari/537.36",
    "chrome-mac": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, "
                  "like Gecko) Chrome/125.0.6422.142 Safari/537.36",
    "chrome-linux": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                    "Chrome/120.0.0.0 Safari/537.36",
    "chrome-chromeos": "Mozilla/5.0 (X11; CrOS x86_64 15633.69.0) AppleWebKit/537.36 (KHTML, like "
                       "Gecko) Chrome/119.0.6045.212 Safari/537.36",
    "chrome-android": "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
                      "Chrome/122.0.0.0 Mobile Safari/537.36",
    "chrome-android-model": "Mozilla/5.0 (Linux; Android 14; Pixel 8 Pro) AppleWebKit/537.36 "
                            "(KHTML, like Gecko) Chrome/121.0.6167.164 Mobile Safari/537.36",
    "chrome-android-tablet": "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 "
                             "(KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36",
    "android-webview": "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A.230901.001; wv) "
                       "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/121.0.6167.178 "
                       "Mobile Safari/537.36",
    "chrome-ios": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3_1 like Mac OS X) AppleWebKit/605.1.15 "
                  "(KHTML, like Gecko) CriOS/122.0.6261.89 Mobile/15E148 Safari/604.1",
    "chrome-ipad": "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
                   "like Gecko) CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1",
    "firefox-windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:123.0) Gecko/20100101 "
                       "Firefox/123.0",
    "firefox-mac": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:123.0) Gecko/20100101 "
                   "Firefox/123.0",
    "firefox-linux": "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Firefox/115.0",
    "firefox-android": "Mozilla/5.0 (Android 14; Mobile; rv:123.0) Gecko/123.0 Firefox/123.0",
    "firefox-ios": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 "
                   "(KHTML, like Gecko) FxiOS/123.0 Mobile/15E148 Safari/605.1.15",
    "safari-mac": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, "
                  "like Gecko) Version/17.3.1 Safari/605.1.15",
    "safari-iphone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3_1 like Mac OS X) "
                     "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3.1 Mobile/15E148 "
                     "Safari/604.1",
    "safari-ipad": "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
                   "like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "ios-webview": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3_1 like Mac OS X) AppleWebKit/605.1.15 "
                   "(KHTML, like Gecko) Mobile/15E148",
    "edge-windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
                    "Gecko) Chrome/122.0.0.0 Safari/537.36 Edg/122.0.2365.66",
    "edge-mac": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like "
                "Gecko) Chrome/122.0.0.0 Safari/537.36 Edg/122.0.2365.66",
    "edge-android": "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
                    "Chrome/122.0.0.0 Mobile Safari/537.36 EdgA/122.0.2365.56",
    "edge-ios": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 "
                "(KHTML, like Gecko) Version/17.0 EdgiOS/122.2365.56 Mobile/15E148 "
                "Safari/605.1.15",
    "opera-windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
                     "Gecko) Chrome/121.0.0.0 Safari/537.36 OPR/107.0.0.0",
    "opera-android": "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
                     "Chrome/119.0.0.0 Mobile Safari/537.36 OPR/79.1.4195.76505",
    "samsung-internet": "Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-S918B) AppleWebKit/537.36 "
                        "(KHTML, like Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile "
                        "Safari/537.36",
    "yandex-windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
                      "Gecko) Chrome/122.0.0.0 YaBrowser/24.1.0.0 Safari/537.36",
    "google-app-ios": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3_1 like Mac OS X) "
                      "AppleWebKit/605.1.15 (KHTML, like Gecko) GSA/300.0.598994205 Mobile/15E148 "
                      "Safari/604.1",
    "cubot-phone": "Mozilla/5.0 (Linux; Android 10; CUBOT X30) AppleWebKit/537.36 (KHTML, like "
                   "Gecko) Chrome/122.0.0.0 Mobile Safari/537.36",
}
# Distributions are folded into "Linux" on purpose.
DISTRIBUTIONS = {
    "firefox-ubuntu": "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:122.0) Gecko/20100101 "
                      "Firefox/122.0",
    "firefox-fedora": "Mozilla/5.0 (X11; Fedora; Linux x86_64; rv:123.0) Gecko/20100101 "
                      "Firefox/123.0",
}
# Browsers without a template: only the OS is kept.
UNTEMPLATED = {
    "facebook-ios": ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_3_1 like Mac OS X) "
                     "AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;"
                     "FBDV/iPhone14,5;FBMD/iPhone;FBSN/iOS;FBSV/17.3.1;FBSS/3;FBID/phone;"
                     "FBLC/en_US;FBOP/5]", "Mobile Safari UI/WKWebView", "iOS"),
    "instagram-android": ("Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UD1A.230803.041; wv) "
                          "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 "
                          "Chrome/122.0.6261.64 Mobile Safari/537.36 Instagram 320.0.0.34.109 "
                          "Android (34/14; 420dpi; 1080x2205; Google/google; Pixel 8; shiba; "
                          "shiba; en_US; 567067343)", "Other", "Android"),
    "uc-browser": ("Mozilla/5.0 (Linux; U; Android 12; en-US; SM-A125F Build/SP1A.210812.016) "
                   "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/100.0.4896.58 "
                   "UCBrowser/13.4.0.1306 Mobile Safari/537.36", "Other", "Android"),
    "vivaldi": ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                "Chrome/122.0.0.0 Safari/537.36 Vivaldi/6.6.3271.45", "Other", "Windows"),
    "ie11": ("Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko", "Other",
             "Windows"),
}
BOTS = {
    "googlebot": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "googlebot-smartphone": "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) "
                            "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.6261.94 Mobile "
                            "Safari/537.36 (compatible; Googlebot/2.1; "
                            "+http://www.google.com/bot.html)",
    "bingbot": "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "applebot": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, "
                "like Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; "
                "+http://www.apple.com/go/applebot)",
    "facebook-preview": "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "bytespider": "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile "
                  "Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)",
    "headless-chrome": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                       "HeadlessChrome/122.0.6261.57 Safari/537.36",
    "lighthouse": "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 (KHTML, "
                  "like Gecko) Chrome/109.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse",
    "phantomjs": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
                 "Gecko) PhantomJS/2.1.1 Safari/538.1",
    "python-requests": "python-requests/2.31.0",
    "curl": "curl/8.4.0",
    "wget": "Wget/1.21.4",
    "go": "Go-http-client/1.1",
    "node-fetch": "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
}


def parsed(ua: str) -> tuple[str, str, str]:
    result = ua_parser.parse(ua)
    browser, os = result.user_agent, result.os
    return (browser.family if browser else "Other", (browser and browser.major) or "",
            os.family if os else "Other")


@pytest.mark.parametrize("ua", BROWSERS.values(), ids=BROWSERS.keys())
def test_rebuilt_ua_parses_as_the_same_browser_major_and_os(ua: str) -> None:
    agent = GENERALISER.generalise(ua)
    assert parsed(agent.user_agent) == parsed(ua)
    assert (agent.browser, agent.major, agent.os) == parsed(ua)
    assert not agent.is_bot


@pytest.mark.parametrize("ua", DISTRIBUTIONS.values(), ids=DISTRIBUTIONS.keys())
def test_linux_distributions_become_linux(ua: str) -> None:
    agent = GENERALISER.generalise(ua)
    family, major, _ = parsed(ua)
    assert parsed(agent.user_agent) == (family, major, "Linux")
    assert agent.user_agent == (f"Mozilla/5.0 (X11; Linux x86_64; rv:{major}.0) "
                                f"Gecko/20100101 Firefox/{major}.0")


@pytest.mark.parametrize(("ua", "browser", "os"), UNTEMPLATED.values(), ids=UNTEMPLATED.keys())
def test_browser_without_template_keeps_only_the_os(ua: str, browser: str, os: str) -> None:
    agent = GENERALISER.generalise(ua)
    assert (agent.browser, agent.major, agent.os, agent.is_bot) == (browser, "", os, False)
    assert parsed(agent.user_agent)[2] == os


def test_browsers_without_template_on_one_os_are_indistinguishable() -> None:
    android = [ua for ua, _, os in UNTEMPLATED.values() if os == "Android"]
    windows = [ua for ua, _, os in UNTEMPLATED.values() if os == "Windows"]
    assert {GENERALISER.generalise(ua).user_agent for ua in android} == {
        "Mozilla/5.0 (Linux; Android 10; K)"}
    assert {GENERALISER.generalise(ua).user_agent for ua in windows} == {
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"}


@pytest.mark.parametrize(("ua", "expected"), [
    (BROWSERS["chrome-windows"], "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                                 "(KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36"),
    (BROWSERS["chrome-windows7"], "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                                  "(KHTML, like Gecko) Chrome/109.0.0.0 Safari/537.36"),
    (BROWSERS["chrome-android-model"], "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 "
                                       "(KHTML, like Gecko) Chrome/121.0.0.0 Mobile "
                                       "Safari/537.36"),
    (BROWSERS["safari-iphone"], "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) "
                                "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 "
                                "Mobile/15E148 Safari/604.1"),
    (BROWSERS["chrome-chromeos"], "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 "
                                  "(KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36"),
    (BROWSERS["firefox-windows"], "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:123.0) "
                                  "Gecko/20100101 Firefox/123.0"),
])
def test_platform_tokens_are_frozen_and_versions_zeroed(ua: str, expected: str) -> None:
    assert GENERALISER.generalise(ua).user_agent == expected


@pytest.mark.parametrize("ua", [*BROWSERS.values(), *(u for u, _, _ in UNTEMPLATED.values())])
def test_nothing_rare_survives(ua: str) -> None:
    out = GENERALISER.generalise(ua).user_agent
    for rare in ("Build/", "SM-", "Pixel", "SAMSUNG", "CUBOT", "FBAN", "en_US", "en-US", "6261",
                 "17_3", "16_6", "Android 13", "Android 14", "15633", "Win64; x64; rv:11",
                 "Windows NT 6.1", "iPad"):
        assert rare not in out


def test_visitors_on_the_same_browser_major_and_os_send_the_same_ua() -> None:
    builds = [
        f"Mozilla/5.0 (Linux; Android {android}; {model}) AppleWebKit/537.36 (KHTML, like "
        f"Gecko) Chrome/122.0.{build} Mobile Safari/537.36"
        for android, model, build in [("10", "K", "6261.69"), ("14", "SM-S918B", "6261.90"),
                                      ("12", "moto g(20)", "6261.105")]
    ]
    assert len({GENERALISER.generalise(ua).user_agent for ua in builds}) == 1


@pytest.mark.parametrize("ua", BROWSERS.values(), ids=BROWSERS.keys())
def test_generalising_a_canonical_ua_changes_nothing(ua: str) -> None:
    agent = GENERALISER.generalise(ua)
    assert GENERALISER.generalise(agent.user_agent) == agent


@pytest.mark.parametrize("ua", BOTS.values(), ids=BOTS.keys())
def test_bots_and_automation_are_flagged_with_a_generic_ua(ua: str) -> None:
    assert GENERALISER.generalise(ua) == GeneralisedAgent(GENERIC, "Other", "", "Other", True)


def test_with_allow_headless_headless_chromium_is_chrome_and_other_bots_stay_bots() -> None:
    allowing = UserAgentGeneraliser(allow_headless=True)
    headless = allowing.generalise(BOTS["headless-chrome"])
    chrome = GENERALISER.generalise(BOTS["headless-chrome"].replace("HeadlessChrome", "Chrome"))
    assert headless == chrome
    assert (headless.browser, headless.major, headless.is_bot) == ("Chrome", "122", False)
    for name, ua in BOTS.items():
        if name != "headless-chrome":
            assert allowing.generalise(ua).is_bot, name


def test_generalisers_share_matchers_but_not_their_settings_or_caches() -> None:
    # uap-core's matchers cost about 24 MiB; the pipeline, MP ingest and explain each hold a
    # generaliser, so one process builds them once (48 MiB of start-up RSS otherwise).
    allowing, strict = UserAgentGeneraliser(allow_headless=True), UserAgentGeneraliser()
    assert allowing._parser is strict._parser is GENERALISER._parser
    # The one that allows headless Chromium parses it first; the other still sees a bot.
    assert not allowing.generalise(BOTS["headless-chrome"]).is_bot
    assert strict.cached == 0
    assert strict.generalise(BOTS["headless-chrome"]).is_bot


@pytest.mark.parametrize("ua", [None, ""])
def test_missing_ua_is_generic_and_not_a_bot(ua: str | None) -> None:
    assert GENERALISER.generalise(ua) == GeneralisedAgent(GENERIC, "Other", "", "Other", False)


@pytest.mark.parametrize("ua", ["Mozilla/5.0 (PlayStation 5 3.11) AppleWebKit/605.1.15",
                                "Mozilla/5.0 (X11; FreeBSD amd64; rv:122.0) Gecko/20100101 "
                                "Firefox/122.0", "Opera/9.80 (J2ME/MIDP; Opera Mini/9.80)",
                                "x" * 5000])
def test_unknown_os_gives_the_generic_ua(ua: str) -> None:
    agent = GENERALISER.generalise(ua)
    assert (agent.user_agent, agent.browser, agent.os) == (GENERIC, "Other", "Other")


def test_cache_is_bounded_and_serves_repeat_uas() -> None:
    generaliser = UserAgentGeneraliser(cache_size=3)
    uas = list(BROWSERS.values())
    first = generaliser.generalise(uas[0])
    assert generaliser.generalise(uas[0]) is first
    for ua in uas:
        generaliser.generalise(ua)
    assert generaliser.cached == 3


def test_cache_can_be_disabled() -> None:
    generaliser = UserAgentGeneraliser(cache_size=0)
    generaliser.generalise(BROWSERS["chrome-windows"])
    assert generaliser.cached == 0


def test_negative_cache_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="cache_size"):
        UserAgentGeneraliser(cache_size=-1)


@given(st.one_of(st.none(), st.text()))
@settings(max_examples=300)
def test_generalise_never_raises_and_always_returns_a_known_shape(ua: str | None) -> None:
    agent = GeneralisedAgent(*(getattr(GENERALISER.generalise(ua), f) for f in (
        "user_agent", "browser", "major", "os", "is_bot")))
    assert agent.user_agent.startswith("Mozilla/5.0 (")
    assert agent.major == "" or agent.major.isdigit()
