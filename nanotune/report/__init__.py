"""Tables and plots over saved results: `nanotune compare` and `nanotune report`."""
