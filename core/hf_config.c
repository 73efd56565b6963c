#include "core/hf_config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "store/store.h"

int hf_config_load(const char *path, json_t **out, char *err, size_t errlen) {
    json_error_t je;
    *out = NULL;
    json_t *o = json_load_file(path, 0, &je);
    if (!o) {
        FILE *f = fopen(path, "rb");
        if (!f) return iisan_fail(err, errlen, IISAN_EIO, "%s: %s", path, strerror(errno));
        fclose(f);
        return iisan_fail(err, errlen, IISAN_EFORMAT, "%s:%d: %s", path, je.line, je.text);
    }
    if (!json_is_object(o)) {
        json_decref(o);
        return iisan_fail(err, errlen, IISAN_EFORMAT, "%s: not a JSON object", path);
    }
    *out = o;
    return 0;
}

int hf_config_int(json_t *o, const char *key, int def, int lo, int hi, int *out, const char *path,
                  char *err, size_t errlen) {
    json_t *v = json_object_get(o, key);
    if (!v) {
        if (def < 0) return iisan_fail(err, errlen, IISAN_EFORMAT, "%s: no \"%s\"", path, key);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return iisan_fail(err, errlen, IISAN_EFORMAT, "%s: \"%s\" must be an integer in %d..%d",
                          path, key, lo, hi);
    *out = (int)json_integer_value(v);
    return 0;
}
