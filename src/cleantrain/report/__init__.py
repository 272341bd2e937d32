"""Reports: example galleries of attacks, HTML reports of runs."""
