package steptime

import (
	"math"
	"strings"
	"testing"
)

// blackbox is the simulator's old linear model, with the shape of the study's programs.
func blackbox(f Features) float64 {
	return -0.5 + float64(0.3*f.PrefillTokens) + float64(12.0*f.DecodeTokens)
}

func constFormula(us float64) Formula {
	return Formula{Target: "test", Predict: func(Features) float64 { return us }}
}

func newTestModel(t *testing.T, formula Formula) *Model {
	t.Helper()
	m, err := NewModel(formula, testFacts, testHW, Overheads{QueueingUS: 7, OutputTokenProcessingUS: 11, SchedulingProcessingUS: 13, PreemptionProcessingUS: 17})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMicros(t *testing.T) {
	below := math.Nextafter(maxInt64Float, 0) // largest float64 below 2^63
	tests := []struct {
		us   float64
		want int64
	}{
		{math.NaN(), 1},
		{math.Inf(-1), 1},
		{-5, 1},
		{0, 1},
		{math.Copysign(0, -1), 1},
		{0.4, 1},
		{1, 1},
		{1.49, 1},
		{1.5, 2},
		{2.5, 3}, // halves round away from zero, not to even
		{1234.5678, 1235},
		{below, int64(below)},
		{maxInt64Float, math.MaxInt64},
		{1e300, math.MaxInt64},
		{math.Inf(1), math.MaxInt64},
	}
	for _, tt := range tests {
		if got := Micros(tt.us); got != tt.want {
			t.Errorf("Micros(%v) = %d, want %d", tt.us, got, tt.want)
		}
	}
}

func TestStepTime(t *testing.T) {
	batch := []*Request{
		{InputLen: 100, ProgressIndex: 0, NumNewTokens: 100},
		{InputLen: 10, OutputLen: 5, ProgressIndex: 14, NumNewTokens: 1},
		{InputLen: 10, OutputLen: 5, ProgressIndex: 14, NumNewTokens: 1},
	}
	tests := []struct {
		name    string
		formula Formula
		batch   []*Request
		want    int64
	}{
		{"blackbox", Formula{Target: "duration_us", Predict: blackbox}, batch, 54}, // -0.5+30+24 = 53.5
		{"blackbox on empty batch floors at 1", Formula{Target: "duration_us", Predict: blackbox}, nil, 1},
		{"NaN floors at 1", constFormula(math.NaN()), batch, 1},
		{"-Inf floors at 1", constFormula(math.Inf(-1)), batch, 1},
		{"+Inf saturates", constFormula(math.Inf(1)), batch, math.MaxInt64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := newTestModel(t, tt.formula).StepTime(tt.batch); got != tt.want {
				t.Errorf("StepTime = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestStepTimeDoesNotAllocate(t *testing.T) {
	m := newTestModel(t, Formula{Target: "duration_us", Predict: blackbox})
	batch := benchBatch(128)
	if n := testing.AllocsPerRun(100, func() { sinkInt = m.StepTime(batch) }); n != 0 {
		t.Errorf("StepTime allocates %v times per call, want 0", n)
	}
}

func TestOverheadMethodsReturnTheConfiguredConstants(t *testing.T) {
	m := newTestModel(t, constFormula(5))
	tests := []struct {
		name string
		got  int64
		want int64
	}{
		{"QueueingTime", m.QueueingTime(&Request{InputLen: 4096}), 7},
		{"QueueingTime of another request", m.QueueingTime(&Request{InputLen: 1}), 7},
		{"OutputTokenProcessingTime", m.OutputTokenProcessingTime(), 11},
		{"SchedulingProcessingTime", m.SchedulingProcessingTime(), 13},
		{"PreemptionProcessingTime", m.PreemptionProcessingTime(), 17},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %d, want %d", tt.name, tt.got, tt.want)
		}
	}
	var zero Overheads
	m0, err := NewModel(constFormula(5), testFacts, testHW, zero)
	if err != nil {
		t.Fatal(err)
	}
	if m0.QueueingTime(nil)+m0.OutputTokenProcessingTime()+m0.SchedulingProcessingTime()+m0.PreemptionProcessingTime() != 0 {
		t.Error("zero Overheads do not give zero times")
	}
}

func TestNewModelRejectsBadFacts(t *testing.T) {
	tests := []struct {
		name    string
		formula Formula
		facts   ModelFacts
		hw      Hardware
		wantErr string
	}{
		{"no Predict", Formula{Target: "duration_us"}, testFacts, testHW, "no Predict"},
		{"TP 0", constFormula(1), testFacts, Hardware{PeakFlopsBF16: 1, PeakBandwidth: 1}, "TP is 0"},
		{"zero layers", constFormula(1), ModelFacts{HiddenDim: 1, NumHeads: 1, IntermediateDim: 1, NumExperts: 1, ActiveExperts: 1}, testHW, "NumLayers is 0"},
		{"NaN bandwidth", constFormula(1), testFacts, Hardware{PeakFlopsBF16: 1, PeakBandwidth: math.NaN(), TP: 1}, "PeakBandwidth is NaN"},
		{"infinite FLOP/s", constFormula(1), testFacts, Hardware{PeakFlopsBF16: math.Inf(1), PeakBandwidth: 1, TP: 1}, "PeakFlopsBF16 is +Inf"},
		{"more active experts than experts", constFormula(1), ModelFacts{HiddenDim: 1, NumLayers: 1, NumHeads: 1, IntermediateDim: 1, NumExperts: 2, ActiveExperts: 3}, testHW, "ActiveExperts 3 exceeds NumExperts 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewModel(tt.formula, tt.facts, tt.hw, Overheads{})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("NewModel error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
