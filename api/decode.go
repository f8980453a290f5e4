package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

// decodeJSON decodes a request body into v, a pointer to a flat struct of
// the API (ExecRequest, FileRequest, PatchRequest, OpRequest), strictly:
// the body is valid UTF-8 holding exactly one JSON object, each key one
// of v's json names spelt exactly and given once, no value null, no
// string holding a NUL byte, every field tagged api:"required" present,
// and nothing after the object. A refusal names the field.
func decodeJSON(body []byte, v any) error {
	if err := decodeStrict(body, v); err != nil {
		return fmt.Errorf("request body: %w", err)
	}
	return nil
}

func decodeStrict(body []byte, v any) error {
	if !utf8.Valid(body) {
		return errors.New("not valid UTF-8")
	}
	rv := reflect.ValueOf(v).Elem()
	fields := jsonFields(rv.Type())
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	switch {
	case err == io.EOF:
		return errors.New("empty: want a JSON object")
	case err != nil:
		return syntaxError(err)
	case tok != json.Delim('{'):
		return fmt.Errorf("want a JSON object, not %s", tokenKind(tok))
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return syntaxError(err)
		}
		key, ok := tok.(string) // the decoder gives keys as strings, or an error
		if !ok {
			return fmt.Errorf("malformed JSON: %s where a field name belongs", tokenKind(tok))
		}
		f, ok := fields[key]
		switch {
		case !ok:
			return fmt.Errorf("unknown field %s", quote(key))
		case seen[key]:
			return fmt.Errorf("field %s given twice", quote(key))
		}
		seen[key] = true
		if isNull(body[dec.InputOffset():]) {
			return fmt.Errorf("field %s: null is not a value (leave the field out instead)", quote(key))
		}
		if err := dec.Decode(rv.FieldByIndex(f.index).Addr().Interface()); err != nil {
			return fmt.Errorf("field %s: %s", quote(key), valueError(err))
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return syntaxError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	for _, name := range sortedNames(fields) {
		f := fields[name]
		fv := rv.FieldByIndex(f.index)
		if f.required && !seen[name] {
			return fmt.Errorf("field %s is required", quote(name))
		}
		if fv.Kind() == reflect.String && strings.IndexByte(fv.String(), 0) >= 0 {
			return fmt.Errorf("field %s: a NUL byte in the string", quote(name))
		}
	}
	return nil
}

type jsonField struct {
	index    []int
	required bool
}

// jsonFields maps t's JSON names to its fields (flat structs only).
func jsonFields(t reflect.Type) map[string]jsonField {
	m := map[string]jsonField{}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
		if !sf.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			name = sf.Name
		}
		m[name] = jsonField{index: sf.Index, required: sf.Tag.Get("api") == "required"}
	}
	return m
}

func sortedNames(m map[string]jsonField) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	// A few fields: insertion sort keeps the first refusal deterministic.
	for i := 1; i < len(names); i++ {
		for j := i; j > 0 && names[j] < names[j-1]; j-- {
			names[j], names[j-1] = names[j-1], names[j]
		}
	}
	return names
}

// isNull reports whether the value after a key (b starts right after the
// key's closing quote) is the literal null.
func isNull(b []byte) bool {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 || b[0] != ':' {
		return false
	}
	b = bytes.TrimLeft(b[1:], " \t\r\n")
	return bytes.HasPrefix(b, []byte("null"))
}

func tokenKind(tok json.Token) string {
	switch t := tok.(type) {
	case nil:
		return "null"
	case json.Delim:
		if t == '[' {
			return "an array"
		}
		return strconv.Quote(t.String())
	case string:
		return "a string"
	case float64, json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return fmt.Sprintf("%T", tok)
}

// valueError says what was wrong with a field's value, without Go type
// names.
func valueError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("want %s, not %s", jsonType(te.Type), clip(te.Value))
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return "malformed JSON: " + strings.TrimPrefix(se.Error(), "json: ")
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return "the body ends inside the value"
	}
	// base64 of a []byte field: "illegal base64 data at input byte N".
	return strings.TrimPrefix(err.Error(), "json: ")
}

func jsonType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer in range"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "a base64 string"
		}
		return "an array"
	}
	return t.String()
}

func syntaxError(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("malformed JSON: the body ends inside the object")
	}
	return fmt.Errorf("malformed JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
}

// quote is a client-supplied name for a message: quoted, and clipped.
func quote(s string) string { return strconv.Quote(clip(s)) }
