"""The first-party tag and tracker: gtag.js served rewritten, /t.js, ads endpoints answered."""
