//! Datasets for text classification: CSV loading, label maps, seeded splits and the padding
//! batcher. Populated by the training issue; tokenisation and padding already live in
//! `bert_model::tokenizer`, which the batcher will build on.
