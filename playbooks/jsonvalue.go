package playbooks

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/open-policy-agent/opa/v1/ast"
)

// maxJSONDepth bounds the nesting of a document converted by jsonToValue.
const maxJSONDepth = 64

// jsonToValue converts one JSON document to an OPA value directly, without the
// interface{} round trip ast.ValueFromReader makes: the input conversion is on the
// evaluation path. Numbers keep their JSON text, as with ValueFromReader.
func jsonToValue(b []byte) (ast.Value, error) {
	p := jsonParser{b: b}
	p.space()
	t, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.space()
	if p.i != len(p.b) {
		return nil, p.errorf("trailing data")
	}
	return t.Value, nil
}

type jsonParser struct {
	b []byte
	i int
}

func (p *jsonParser) errorf(format string, args ...any) error {
	return fmt.Errorf("json at offset %d: %s", p.i, fmt.Sprintf(format, args...))
}

func (p *jsonParser) space() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jsonParser) value(depth int) (*ast.Term, error) {
	if depth > maxJSONDepth {
		return nil, p.errorf("nested deeper than %d", maxJSONDepth)
	}
	if p.i >= len(p.b) {
		return nil, p.errorf("unexpected end")
	}
	switch c := p.b[p.i]; {
	case c == '{':
		return p.object(depth)
	case c == '[':
		return p.array(depth)
	case c == '"':
		s, err := p.str()
		if err != nil {
			return nil, err
		}
		return ast.InternedTerm(s), nil
	case c == 't':
		return p.literal("true", ast.InternedTerm(true))
	case c == 'f':
		return p.literal("false", ast.InternedTerm(false))
	case c == 'n':
		return p.literal("null", ast.NullTerm())
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	default:
		return nil, p.errorf("unexpected %q", c)
	}
}

func (p *jsonParser) literal(word string, v *ast.Term) (*ast.Term, error) {
	if len(p.b)-p.i < len(word) || string(p.b[p.i:p.i+len(word)]) != word {
		return nil, p.errorf("invalid literal")
	}
	p.i += len(word)
	return v, nil
}

func (p *jsonParser) number() (*ast.Term, error) {
	start := p.i
	for p.i < len(p.b) {
		c := p.b[p.i]
		if (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E' {
			p.i++
			continue
		}
		break
	}
	text := string(p.b[start:p.i])
	if !json.Valid(p.b[start:p.i]) {
		return nil, p.errorf("invalid number %q", text)
	}
	if t := ast.InternedIntNumberTermFromString(text); t != nil {
		return t, nil
	}
	return ast.NewTerm(ast.Number(text)), nil
}

// str reads a JSON string. Strings without escapes (nearly all) are sliced directly;
// the others are decoded by encoding/json.
func (p *jsonParser) str() (string, error) {
	start := p.i
	p.i++ // opening quote
	escaped := false
	for p.i < len(p.b) {
		switch c := p.b[p.i]; {
		case c == '"':
			p.i++
			if !escaped {
				return string(p.b[start+1 : p.i-1]), nil
			}
			var s string
			if err := json.Unmarshal(p.b[start:p.i], &s); err != nil {
				return "", p.errorf("invalid string: %v", err)
			}
			return s, nil
		case c == '\\':
			escaped = true
			p.i += 2
		case c < 0x20:
			return "", p.errorf("control character in string")
		default:
			p.i++
		}
	}
	return "", errors.New("json: unterminated string")
}

func (p *jsonParser) object(depth int) (*ast.Term, error) {
	p.i++ // {
	var items [][2]*ast.Term
	p.space()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
		return ast.NewTerm(ast.NewObject()), nil
	}
	for {
		p.space()
		if p.i >= len(p.b) || p.b[p.i] != '"' {
			return nil, p.errorf("want an object key")
		}
		k, err := p.str()
		if err != nil {
			return nil, err
		}
		p.space()
		if p.i >= len(p.b) || p.b[p.i] != ':' {
			return nil, p.errorf("want ':'")
		}
		p.i++
		p.space()
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		items = append(items, [2]*ast.Term{ast.InternedTerm(k), v})
		p.space()
		if p.i >= len(p.b) {
			return nil, p.errorf("unterminated object")
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return ast.NewTerm(newObject(items)), nil
		default:
			return nil, p.errorf("want ',' or '}'")
		}
	}
}

func (p *jsonParser) array(depth int) (*ast.Term, error) {
	p.i++ // [
	var terms []*ast.Term
	p.space()
	if p.i < len(p.b) && p.b[p.i] == ']' {
		p.i++
		return ast.NewTerm(ast.NewArray()), nil
	}
	for {
		p.space()
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		terms = append(terms, v)
		p.space()
		if p.i >= len(p.b) {
			return nil, p.errorf("unterminated array")
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			return ast.NewTerm(ast.NewArray(terms...)), nil
		default:
			return nil, p.errorf("want ',' or ']'")
		}
	}
}

// newObject builds an object in one allocation; a repeated key keeps its last value, as
// encoding/json does.
func newObject(items [][2]*ast.Term) ast.Object {
	seen := make(map[string]struct{}, len(items))
	for _, kv := range items {
		k := string(kv[0].Value.(ast.String))
		if _, dup := seen[k]; dup {
			obj := ast.NewObject()
			for _, kv := range items {
				obj.Insert(kv[0], kv[1])
			}
			return obj
		}
		seen[k] = struct{}{}
	}
	return ast.NewObject(items...)
}
