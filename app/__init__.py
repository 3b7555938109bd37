"""tuneserve: fine-tune Hugging Face text models on your own labelled data, and serve them."""
