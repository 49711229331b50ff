"""kfp v2 components: thin wrappers that run the loop's plain functions as pipeline steps."""
