/* WordPiece tokenization exactly as Hugging Face's BertTokenizer (the Python
 * one, transformers 4.x) does it with do_lower_case = True (uncased BERT):
 *
 *  1. the special tokens [UNK] [SEP] [PAD] [CLS] [MASK] written literally in
 *     the text are split out (case-sensitive) and become their ids;
 *  2. the rest is lower-cased one character at a time (Python's str.lower,
 *     so U+0130 becomes "i" + U+0307);
 *  3. clean: NUL, U+FFFD and every C* character (controls, format,
 *     unassigned, private use) are dropped except tab / newline / CR, which
 *     with every Zs character become a space;
 *  4. spaces are put around CJK ideographs;
 *  5. split on whitespace (str.isspace); each word is lower-cased again,
 *     decomposed (NFD) and stripped of Mn marks (accents), then split so that
 *     every punctuation character (ASCII punctuation and every P* category)
 *     is a word of its own;
 *  6. each word of more than 100 code points is [UNK]; otherwise greedy
 *     longest-match-first wordpieces, continuations prefixed "##"; a word
 *     with no match at some point is one [UNK].
 *
 * Unicode data: core/wordpiece_unicode.h, generated from Python's unicodedata
 * by core/gen_wordpiece_unicode.py. HTML entities are not decoded ("&amp;" is
 * '&', 'amp', ';'). Invalid UTF-8 bytes count as U+FFFD (dropped at step 3).
 *
 * A wp_vocab is read-only after wp_load: any number of threads may tokenize
 * with it at once. */
#ifndef IISAN_CORE_WORDPIECE_H
#define IISAN_CORE_WORDPIECE_H

#include <stddef.h>
#include <stdint.h>

typedef struct wp_vocab wp_vocab;

/* Reads a vocab.txt (one token per line, id = line number from 0; later
 * duplicates win, as in Hugging Face's load_vocab). The vocabulary must hold
 * [UNK], [CLS], [SEP] and [PAD]. Returns 0, or IISAN_EIO / IISAN_EFORMAT /
 * IISAN_ENOMEM with "path: problem" in err. */
int wp_load(wp_vocab **out, const char *path, char *err, size_t errlen);
/* the same from bytes in memory (name is used in messages) */
int wp_parse(wp_vocab **out, const char *bytes, size_t len, const char *name, char *err,
             size_t errlen);
void wp_free(wp_vocab *v);

int wp_size(const wp_vocab *v);                      /* lines read */
int wp_lookup(const wp_vocab *v, const char *token); /* id, or -1 */
const char *wp_token(const wp_vocab *v, int id);     /* NULL when out of range */
int wp_id_unk(const wp_vocab *v);
int wp_id_cls(const wp_vocab *v);
int wp_id_sep(const wp_vocab *v);
int wp_id_pad(const wp_vocab *v);

/* Tokenizes len bytes of UTF-8 text without [CLS] / [SEP]: writes the first
 * min(count, cap) ids to ids and returns count (the whole text's), or
 * IISAN_ENOMEM. */
int wp_tokenize(const wp_vocab *v, const char *text, size_t len, int32_t *ids, int cap);

/* The model input of one text: [CLS], the first max_len - 2 wordpieces,
 * [SEP], then [PAD] up to max_len (max_len >= 2); mask is 1 on the real
 * positions and 0 on padding (either of ids / mask may be NULL). Returns the
 * number of real positions (2..max_len), or IISAN_ENOMEM / IISAN_EINVAL. */
int wp_encode(const wp_vocab *v, const char *text, size_t len, int max_len, int32_t *ids,
              int32_t *mask);

#endif
