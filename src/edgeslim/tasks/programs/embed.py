"""The embed program of a delivered predict.py: preprocess the inputs, run the model, decode and print.

`edgeslim.deploy.snippet` appends it to the engine's runner; `main` gets the runner, deploy.json and the folder.
"""


import numpy as np

USAGE = 'SENTENCE [SENTENCE ...]'


def main(run, D, ROOT, argv):
    INPUTS = [t["name"] for t in D["inputs"]]
    from tokenizers import Tokenizer

    PRE = D["task"]["preprocess"]
    TOK = Tokenizer.from_str(PRE["tokenizer_json"])
    TOK.no_padding()
    TOK.enable_truncation(PRE["max_length"])
    PAD = TOK.token_to_id("[PAD]") or 0

    def encode(sentences):
        """WordPiece ids and attention mask, padded to the longest sentence (int64)."""
        enc = TOK.encode_batch(sentences)
        n = max(len(e.ids) for e in enc)
        ids = np.full((len(enc), n), PAD, np.int64)
        mask = np.zeros((len(enc), n), np.int64)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in INPUTS:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return feeds

    sentences = argv
    emb = run(encode(sentences))[0]  # L2-normalised inside the model: cosine = dot product
    for s, e in zip(sentences, emb):
        print(f"{s}\t{np.array2string(e[:6], precision=4)} ...")
    for j in range(1, len(sentences)):
        print(f"cosine(1, {j + 1})\t{float(emb[0] @ emb[j]):.4f}")
