"""What the build reads: records, tokenized examples, the model and the layers it tracks."""
