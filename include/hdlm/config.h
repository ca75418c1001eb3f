// hdlm/config.h — typed configurations from YAML files and key=value overrides.
//
// A configuration is a plain C struct; a schema (a table of fields: dotted key, type, offset, default, range) binds
// YAML keys to its members. Nested YAML mappings flatten to dotted keys ("training: {batch_size: 64}" sets
// "training.batch_size"). Unknown keys, wrong types and out-of-range values are refused with the key, the file and
// line (or the override) named. The resolved configuration is written back as YAML for the run's records.
#ifndef HDLM_CONFIG_H
#define HDLM_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define HDLM_CONFIG_STRING_MAX 256   // string members are char[HDLM_CONFIG_STRING_MAX]

typedef enum { HDLM_CONFIG_INT, HDLM_CONFIG_DOUBLE, HDLM_CONFIG_BOOL, HDLM_CONFIG_STRING } hdlm_config_type;

typedef struct {
    const char *key;             // dotted key, e.g. "training.batch_size"; fields sharing a prefix are adjacent
    hdlm_config_type type;       // member type: int64_t, double, bool, char[HDLM_CONFIG_STRING_MAX]
    size_t offset;               // offsetof(struct, member)
    const char *default_value;   // parsed exactly like a value from a file
    double min, max;             // inclusive range for INT and DOUBLE (no range when min > max)
    const char *choices;         // STRING: allowed values "a|b|c", or NULL for any text
    const char *help;            // one line for --help listings
} hdlm_config_field;

typedef struct {
    const hdlm_config_field *fields;
    int n_fields;
} hdlm_config_schema;

#define HDLM_CONFIG_NO_RANGE 1.0, 0.0

// Sets every field to its default value.
int hdlm_config_defaults(const hdlm_config_schema *schema, void *config);
// Applies the keys of a YAML file (a mapping, possibly nested); keys absent from the file keep their values.
int hdlm_config_load_yaml(const hdlm_config_schema *schema, void *config, const char *path);
// The same from YAML text in memory (a configuration stored in a checkpoint); `origin` names it in messages.
int hdlm_config_load_yaml_string(const hdlm_config_schema *schema, void *config, const char *text, const char *origin);
// Sets one key from text; `origin` names where the value came from in error messages.
int hdlm_config_set(const hdlm_config_schema *schema, void *config, const char *key, const char *value,
                    const char *origin);
// Applies "key=value" (a command-line override).
int hdlm_config_override(const hdlm_config_schema *schema, void *config, const char *assignment);
// Writes the configuration as nested YAML that hdlm_config_load_yaml reads back to the same values.
void hdlm_config_write_yaml(const hdlm_config_schema *schema, const void *config, FILE *out);
// The same YAML as a malloc'ed string (stored in checkpoints and run directories).
char *hdlm_config_to_yaml(const hdlm_config_schema *schema, const void *config);
// Prints "key  default  help" lines (for --help).
void hdlm_config_print_help(const hdlm_config_schema *schema, FILE *out);

#endif
