// Renders Ollama TEMPLATEs with Go's text/template, the engine Ollama runs them with, for tests/test_ollama_templates.py.
//
// Input (stdin): a JSON list of {"template": ..., "messages": [{"role": ..., "content": ...}, ...]}.
// Output (stdout): a JSON list of the rendered texts. The template sees what Ollama's template.Execute gives it:
// .Messages (every message, system ones included) and .System (the system messages' contents joined by a blank line).
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type render struct {
	Template string    `json:"template"`
	Messages []message `json:"messages"`
}

func main() {
	var cases []render
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	out := []string{}
	for _, c := range cases {
		t := template.Must(template.New("ollama").Parse(c.Template))
		var system []string
		for _, m := range c.Messages {
			if m.Role == "system" {
				system = append(system, m.Content)
			}
		}
		var b strings.Builder
		vars := map[string]any{"Messages": c.Messages, "System": strings.Join(system, "\n\n"), "Tools": nil, "Response": ""}
		if err := t.Execute(&b, vars); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
