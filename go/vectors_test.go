package steptime

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// vectorFile is testdata/<target>_vectors.json as the Python emitter writes it: feature rows
// and the prediction the compiled Python program made for each.
type vectorFile struct {
	Target        string `json:"target"`
	ProgramSHA256 string `json:"program_sha256"`
	Vectors       []struct {
		Name     string               `json:"name"`
		Features map[string]jsonFloat `json:"features"`
		Want     jsonFloat            `json:"want"`
	} `json:"vectors"`
}

// jsonFloat is a float64 that JSON carries as a number, or as "NaN", "+Inf" or "-Inf" (JSON
// has no non-finite numbers).
type jsonFloat float64

func (x *jsonFloat) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		switch s {
		case "NaN":
			*x = jsonFloat(math.NaN())
		case "+Inf":
			*x = jsonFloat(math.Inf(1))
		case "-Inf":
			*x = jsonFloat(math.Inf(-1))
		default:
			return fmt.Errorf("float string %q is not NaN, +Inf or -Inf", s)
		}
		return nil
	}
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*x = jsonFloat(f)
	return nil
}

// vectorTolerance is the agreement asked of Go and numpy: relative for predictions of 1 µs and
// more, absolute 1e-12 µs below. Both sides do the same IEEE operations in the same order;
// they can differ only where a library function (log, exp, pow) is not correctly rounded, by
// an ulp or so per call.
const vectorTolerance = 1e-12

func agrees(got, want float64) bool {
	switch {
	case math.IsNaN(want):
		return math.IsNaN(got)
	case math.IsInf(want, 0):
		return got == want
	}
	return math.Abs(got-want) <= vectorTolerance*math.Max(math.Abs(want), 1)
}

// TestGeneratedFormulasMatchPython checks every generated formula against the predictions of
// the Python program it was translated from. A missing vector file fails rather than skips:
// it means the stage that ships the formulas did not run, or did not write its test data.
func TestGeneratedFormulasMatchPython(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("testdata", "*_vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no testdata/*_vectors.json: the stage that generates the formulas writes them next to the generated files; without them nothing checks the Go formulas against Python")
	}
	tested := map[string]bool{}
	for _, path := range paths {
		target := strings.TrimSuffix(filepath.Base(path), "_vectors.json")
		tested[target] = true
		t.Run(target, func(t *testing.T) { checkVectorFile(t, path, target) })
	}
	for _, f := range Formulas() {
		if !tested[f.Target] {
			t.Errorf("generated formula for %s has no testdata/%s_vectors.json", f.Target, f.Target)
		}
	}
}

func checkVectorFile(t *testing.T, path, target string) {
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var file vectorFile
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if file.Target != target {
		t.Fatalf("%s holds vectors for target %q", path, file.Target)
	}
	formula, ok := LookupFormula(target)
	if !ok {
		t.Fatalf("%s has vectors, but no generated formula registered target %q", path, target)
	}
	if formula.ProgramSHA256 != file.ProgramSHA256 {
		t.Fatalf("%s was made from program %s, the generated formula from %s: regenerate both", path, file.ProgramSHA256, formula.ProgramSHA256)
	}
	if len(file.Vectors) == 0 {
		t.Fatalf("%s has no vectors", path)
	}
	for _, v := range file.Vectors {
		var f Features
		for name, value := range v.Features {
			p := f.Field(name)
			if p == nil {
				t.Fatalf("vector %q: unknown feature %q", v.Name, name)
			}
			*p = float64(value)
		}
		if len(v.Features) != len(FeatureNames) {
			t.Fatalf("vector %q has %d features, want all %d", v.Name, len(v.Features), len(FeatureNames))
		}
		if got, want := formula.Predict(f), float64(v.Want); !agrees(got, want) {
			t.Errorf("vector %q: Go %v, Python %v (relative difference %.3g)", v.Name, got, want, math.Abs(got-want)/math.Abs(want))
		}
	}
}

func TestAgrees(t *testing.T) {
	tests := []struct {
		got, want float64
		ok        bool
	}{
		{1, 1, true},
		{1e6 * (1 + 5e-13), 1e6, true},
		{1e6 * (1 + 5e-12), 1e6, false},
		{1e-13, 0, true}, // below 1 µs the tolerance is absolute
		{1e-11, 0, false},
		{nan, nan, true},
		{0, nan, false},
		{nan, 0, false},
		{inf, inf, true},
		{negInf, inf, false},
		{1e308, inf, false},
		{inf, 1e308, false},
	}
	for _, tt := range tests {
		if agrees(tt.got, tt.want) != tt.ok {
			t.Errorf("agrees(%v, %v) = %v", tt.got, tt.want, !tt.ok)
		}
	}
}

func TestJSONFloat(t *testing.T) {
	var xs []jsonFloat
	if err := json.Unmarshal([]byte(`[1.5, "NaN", "+Inf", "-Inf", -0.0, 1e-310]`), &xs); err != nil {
		t.Fatal(err)
	}
	want := []float64{1.5, nan, inf, negInf, negZ, 1e-310}
	for i, w := range want {
		if !sameFloat(float64(xs[i]), w) {
			t.Errorf("element %d = %v, want %v", i, xs[i], w)
		}
	}
	if err := json.Unmarshal([]byte(`["Infinity"]`), &xs); err == nil {
		t.Error(`"Infinity" was accepted`)
	}
}
