"""Server-side events: Measurement Protocol requests from back ends, through the same gate."""
