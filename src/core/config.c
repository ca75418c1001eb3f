// Typed configurations from YAML (libyaml event API) and key=value overrides (include/hdlm/config.h).
#include "hdlm/config.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "hdlm/common.h"

static const hdlm_config_field *field_find(const hdlm_config_schema *s, const char *key) {
    for (int i = 0; i < s->n_fields; i++)
        if (strcmp(s->fields[i].key, key) == 0) return &s->fields[i];
    return NULL;
}

// Levenshtein distance, to suggest the closest key for a typo.
static int edit_distance(const char *a, const char *b) {
    size_t n = strlen(b);
    int *row = hdlm_malloc((n + 1) * sizeof *row);
    for (size_t j = 0; j <= n; j++) row[j] = (int)j;
    for (size_t i = 1; a[i - 1]; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= n; j++) {
            int up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    int d = row[n];
    free(row);
    return d;
}

static const char *leaf(const char *key) {
    const char *dot = strrchr(key, '.');
    return dot ? dot + 1 : key;
}

// A key in the wrong section ("training.lr" for optim.lr) is a likelier mistake than a typo: a field with the same
// last component wins over the closest spelling.
static int fail_unknown_key(const hdlm_config_schema *s, const char *key, const char *origin) {
    const char *best = NULL;
    int best_d = 1 << 30, same_leaf = 0;
    for (int i = 0; i < s->n_fields; i++)
        if (strcmp(leaf(s->fields[i].key), leaf(key)) == 0) same_leaf++, best = s->fields[i].key;
    if (same_leaf == 1)
        return HDLM_FAIL("%s: unknown configuration key '%s' (did you mean '%s'?)", origin, key, best);
    best = NULL;
    for (int i = 0; i < s->n_fields; i++) {
        int d = edit_distance(key, s->fields[i].key);
        if (d < best_d) best_d = d, best = s->fields[i].key;
    }
    if (best && best_d <= 3) return HDLM_FAIL("%s: unknown configuration key '%s' (did you mean '%s'?)", origin, key, best);
    return HDLM_FAIL("%s: unknown configuration key '%s'", origin, key);
}

static bool parse_bool(const char *v, bool *out) {
    static const char *yes[] = {"true", "yes", "on", "1"}, *no[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) return *out = true, true;
        if (strcasecmp(v, no[i]) == 0) return *out = false, true;
    }
    return false;
}

static bool choice_allowed(const char *choices, const char *v) {
    size_t n = strlen(v);
    for (const char *c = choices; *c;) {
        const char *end = strchr(c, '|');
        size_t len = end ? (size_t)(end - c) : strlen(c);
        if (len == n && strncmp(c, v, n) == 0) return true;
        if (!end) break;
        c = end + 1;
    }
    return false;
}

static int check_range(const hdlm_config_field *f, double x, const char *value, const char *origin) {
    if (f->min <= f->max && !(x >= f->min && x <= f->max))
        return HDLM_FAIL("%s: '%s' = %s is out of range: expected a value in [%g, %g]", origin, f->key, value, f->min,
                         f->max);
    return 0;
}

int hdlm_config_set(const hdlm_config_schema *s, void *config, const char *key, const char *value, const char *origin) {
    const hdlm_config_field *f = field_find(s, key);
    if (!f) return fail_unknown_key(s, key, origin);
    char *member = (char *)config + f->offset;
    char *end = NULL;
    errno = 0;
    switch (f->type) {
    case HDLM_CONFIG_INT: {
        // Integers may be written in scientific notation (n_iters: 1e6) as long as the value is integral.
        double x = strtod(value, &end);
        HDLM_CHECK(*value && end && *end == '\0' && errno == 0 && isfinite(x) && x == floor(x) && fabs(x) < 0x1p53,
                   "%s: '%s' expects an integer, got '%s'", origin, key, value);
        HDLM_TRY(check_range(f, x, value, origin));
        *(int64_t *)member = (int64_t)x;
        break;
    }
    case HDLM_CONFIG_DOUBLE: {
        double x = strtod(value, &end);
        HDLM_CHECK(*value && end && *end == '\0' && errno == 0 && isfinite(x), "%s: '%s' expects a number, got '%s'",
                   origin, key, value);
        HDLM_TRY(check_range(f, x, value, origin));
        *(double *)member = x;
        break;
    }
    case HDLM_CONFIG_BOOL:
        HDLM_CHECK(parse_bool(value, (bool *)member), "%s: '%s' expects true or false, got '%s'", origin, key, value);
        break;
    case HDLM_CONFIG_STRING:
        HDLM_CHECK(strlen(value) < HDLM_CONFIG_STRING_MAX, "%s: '%s' is longer than %d characters", origin, key,
                   HDLM_CONFIG_STRING_MAX - 1);
        HDLM_CHECK(!f->choices || choice_allowed(f->choices, value), "%s: '%s' must be one of %s, got '%s'", origin,
                   key, f->choices, value);
        strcpy(member, value);
        break;
    }
    return 0;
}

int hdlm_config_defaults(const hdlm_config_schema *s, void *config) {
    for (int i = 0; i < s->n_fields; i++)
        HDLM_TRY(hdlm_config_set(s, config, s->fields[i].key, s->fields[i].default_value, "default"));
    return 0;
}

int hdlm_config_override(const hdlm_config_schema *s, void *config, const char *assignment) {
    const char *eq = strchr(assignment, '=');
    HDLM_CHECK(eq && eq != assignment, "override '%s': expected key=value (e.g. training.batch_size=64)", assignment);
    char key[256];
    size_t n = (size_t)(eq - assignment);
    HDLM_CHECK(n < sizeof key, "override '%s': key too long", assignment);
    memcpy(key, assignment, n);
    key[n] = '\0';
    char origin[300];
    snprintf(origin, sizeof origin, "override '%.255s'", assignment);
    return hdlm_config_set(s, config, key, eq + 1, origin);
}

enum { MAX_DEPTH = 16, MAX_KEY_PATH = MAX_DEPTH * 128 };

// "a.b.c" from the stack of mapping keys.
static void key_path(char *out, char keys[][128], int depth) {
    out[0] = '\0';
    for (int d = 0; d < depth; d++) {
        if (d) strcat(out, ".");
        strcat(out, keys[d]);
    }
}

// Every key path of one document (sections too) with its line: a key or section written twice is refused, not
// silently overwritten by its last occurrence.
typedef struct {
    char (*paths)[MAX_KEY_PATH];
    size_t *lines;
    int n, cap;
} seen_keys;

static int seen_add(seen_keys *s, const char *path, size_t line, const char *file) {
    for (int i = 0; i < s->n; i++)
        HDLM_CHECK(strcmp(s->paths[i], path) != 0, "%s:%zu: '%s' appears twice (first at line %zu)", file, line, path,
                   s->lines[i]);
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->paths = hdlm_realloc(s->paths, (size_t)s->cap * sizeof *s->paths);
        s->lines = hdlm_realloc(s->lines, (size_t)s->cap * sizeof *s->lines);
    }
    snprintf(s->paths[s->n], MAX_KEY_PATH, "%s", path);
    s->lines[s->n++] = line;
    return 0;
}

// The YAML walk keeps a stack of mapping keys; a scalar in key position pushes, a value scalar or a nested mapping's
// end pops. Sequences, aliases and non-mapping documents are refused (no key takes a list).
static int load_yaml(const hdlm_config_schema *s, void *config, yaml_parser_t *parser_ptr, const char *path) {
    yaml_parser_t parser = *parser_ptr;

    char keys[MAX_DEPTH][128];
    seen_keys seen = {0};
    bool expecting_key[MAX_DEPTH];   // per open mapping: is the next scalar a key?
    int depth = 0, rc = 0;
    bool done = false;
    while (!done && rc == 0) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            rc = HDLM_FAIL("%s:%zu:%zu: YAML syntax error: %s", path, parser.problem_mark.line + 1,
                           parser.problem_mark.column + 1, parser.problem ? parser.problem : "unknown");
            break;
        }
        size_t line = ev.start_mark.line + 1;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT: done = true; break;
        case YAML_MAPPING_START_EVENT:
            if (depth > 0 && expecting_key[depth - 1]) {
                rc = HDLM_FAIL("%s:%zu: a mapping cannot be a key", path, line);
            } else if (depth == MAX_DEPTH) {
                rc = HDLM_FAIL("%s:%zu: nesting deeper than %d levels", path, line, MAX_DEPTH);
            } else {
                expecting_key[depth++] = true;
            }
            break;
        case YAML_MAPPING_END_EVENT:
            depth--;
            if (depth > 0) expecting_key[depth - 1] = true;   // the nested mapping was the value of keys[depth-1]
            break;
        case YAML_SCALAR_EVENT: {
            const char *text = (const char *)ev.data.scalar.value;
            if (depth == 0) {
                rc = HDLM_FAIL("%s:%zu: expected a mapping of configuration keys at the top level", path, line);
            } else if (expecting_key[depth - 1]) {
                if (strlen(text) >= sizeof keys[0]) {
                    rc = HDLM_FAIL("%s:%zu: key too long", path, line);
                } else {
                    strcpy(keys[depth - 1], text), expecting_key[depth - 1] = false;
                    char key[MAX_KEY_PATH];
                    key_path(key, keys, depth);
                    rc = seen_add(&seen, key, line, path);
                }
            } else {
                char key[MAX_KEY_PATH];
                key_path(key, keys, depth);
                char origin[4200];
                snprintf(origin, sizeof origin, "%s:%zu", path, line);
                bool is_null = ev.data.scalar.plain_implicit && (text[0] == '\0' || strcmp(text, "~") == 0 ||
                                                                 strcmp(text, "null") == 0);
                if (is_null) rc = HDLM_FAIL("%s: '%s' has no value", origin, key);
                else rc = hdlm_config_set(s, config, key, text, origin);
                expecting_key[depth - 1] = true;
            }
            break;
        }
        case YAML_SEQUENCE_START_EVENT: rc = HDLM_FAIL("%s:%zu: lists are not configuration values", path, line); break;
        case YAML_ALIAS_EVENT: rc = HDLM_FAIL("%s:%zu: YAML aliases are not supported", path, line); break;
        default: break;
        }
        yaml_event_delete(&ev);
    }
    *parser_ptr = parser;
    free(seen.paths);
    free(seen.lines);
    return rc;
}

int hdlm_config_load_yaml(const hdlm_config_schema *s, void *config, const char *path) {
    FILE *f;
    HDLM_TRY(hdlm_fopen_regular(path, "configuration file", &f));
    yaml_parser_t parser;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, f);
    int rc = load_yaml(s, config, &parser, path);
    yaml_parser_delete(&parser);
    fclose(f);
    return rc;
}

int hdlm_config_load_yaml_string(const hdlm_config_schema *s, void *config, const char *text, const char *origin) {
    yaml_parser_t parser;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, strlen(text));
    int rc = load_yaml(s, config, &parser, origin);
    yaml_parser_delete(&parser);
    return rc;
}

// Shortest decimal that reads back to the same double.
static void format_double(double x, char *buf, size_t n) {
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, x);
        if (strtod(buf, NULL) == x) break;
    }
    // Keep a number YAML readers take as a float, not an integer, when it has no '.', 'e', "inf" or "nan".
    if (!strpbrk(buf, ".eEn")) strncat(buf, ".0", n - strlen(buf) - 1);
}

static void write_string(FILE *out, const char *v) {
    bool plain = v[0] != '\0';
    for (const char *c = v; *c; c++)
        if (!(('a' <= *c && *c <= 'z') || ('A' <= *c && *c <= 'Z') || ('0' <= *c && *c <= '9') || strchr("_./-", *c)))
            plain = false;
    bool ambiguous = false;   // text a YAML reader would take as a number or a boolean
    char *end;
    strtod(v, &end);
    bool b;
    if (*v && *end == '\0') ambiguous = true;
    if (parse_bool(v, &b) || strcasecmp(v, "null") == 0) ambiguous = true;
    if (plain && !ambiguous) {
        fputs(v, out);
        return;
    }
    fputc('"', out);
    for (const char *c = v; *c; c++) {
        if (*c == '"' || *c == '\\') fputc('\\', out);
        fputc(*c, out);
    }
    fputc('"', out);
}

void hdlm_config_write_yaml(const hdlm_config_schema *s, const void *config, FILE *out) {
    const char *prev = "";
    for (int i = 0; i < s->n_fields; i++) {
        const hdlm_config_field *f = &s->fields[i];
        // Length of the dotted prefix shared with the previous key, in whole components.
        size_t common = 0;
        for (size_t j = 0; f->key[j] && f->key[j] == prev[j]; j++)
            if (f->key[j] == '.') common = j + 1;
        int indent = 0;
        for (size_t j = 0; j < common; j++) indent += f->key[j] == '.';
        // Open the mappings that differ from the previous key's path.
        const char *part = f->key + common;
        for (const char *dot; (dot = strchr(part, '.')); part = dot + 1, indent++)
            fprintf(out, "%*s%.*s:\n", 2 * indent, "", (int)(dot - part), part);
        fprintf(out, "%*s%s: ", 2 * indent, "", part);
        const char *member = (const char *)config + f->offset;
        char num[64];
        switch (f->type) {
        case HDLM_CONFIG_INT: fprintf(out, "%lld", (long long)*(const int64_t *)member); break;
        case HDLM_CONFIG_DOUBLE:
            format_double(*(const double *)member, num, sizeof num);
            fputs(num, out);
            break;
        case HDLM_CONFIG_BOOL: fputs(*(const bool *)member ? "true" : "false", out); break;
        case HDLM_CONFIG_STRING: write_string(out, member); break;
        }
        fputc('\n', out);
        prev = f->key;
    }
}

char *hdlm_config_to_yaml(const hdlm_config_schema *s, const void *config) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    HDLM_ASSERT(f, "open_memstream failed");
    hdlm_config_write_yaml(s, config, f);
    fclose(f);
    return text;
}

void hdlm_config_print_help(const hdlm_config_schema *s, FILE *out) {
    for (int i = 0; i < s->n_fields; i++) {
        const hdlm_config_field *f = &s->fields[i];
        fprintf(out, "  %-36s %-14s %s", f->key, f->default_value, f->help ? f->help : "");
        if (f->choices) fprintf(out, " (%s)", f->choices);
        fputc('\n', out);
    }
}
