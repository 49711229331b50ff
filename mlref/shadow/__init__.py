"""Shadow deployment: a second model scores live traffic without answering it."""
