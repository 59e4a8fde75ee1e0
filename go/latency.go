package steptime

import (
	"errors"
	"fmt"
	"math"
)

// LatencyModel is the shape of the simulator's latency backend. All times are in
// microseconds.
type LatencyModel interface {
	// StepTime is the time of one engine step that runs the batch.
	StepTime(batch []*Request) int64
	// QueueingTime is the delay before a request arriving at the server can be queued.
	QueueingTime(req *Request) int64
	// OutputTokenProcessingTime is the time to process the output tokens of one step.
	OutputTokenProcessingTime() int64
	// SchedulingProcessingTime is the time to schedule one step.
	SchedulingProcessingTime() int64
	// PreemptionProcessingTime is the time to preempt one request.
	PreemptionProcessingTime() int64
}

// Overheads are the constant times, in microseconds, of the four latency methods that are
// outside the step-time study: it measured steps only, so these come from the simulator's
// configuration.
type Overheads struct {
	QueueingUS              int64
	OutputTokenProcessingUS int64
	SchedulingProcessingUS  int64
	PreemptionProcessingUS  int64
}

// Model is a LatencyModel whose step time is a generated formula. It is safe for concurrent
// use: it holds no state that changes after NewModel.
type Model struct {
	formula   Formula
	facts     ModelFacts
	hardware  Hardware
	overheads Overheads
}

var _ LatencyModel = (*Model)(nil)

// NewModel returns the latency model for a served model on a GPU. It checks the facts that
// the features divide or scale by: a zero or negative one would silently turn every
// prediction into ±Inf, NaN or nonsense.
func NewModel(formula Formula, facts ModelFacts, hw Hardware, overheads Overheads) (*Model, error) {
	if formula.Predict == nil {
		return nil, fmt.Errorf("steptime: formula for target %q has no Predict function", formula.Target)
	}
	var errs []error
	for _, fact := range []struct {
		name  string
		value int
	}{
		{"HiddenDim", facts.HiddenDim},
		{"NumLayers", facts.NumLayers},
		{"NumHeads", facts.NumHeads},
		{"IntermediateDim", facts.IntermediateDim},
		{"NumExperts", facts.NumExperts},
		{"ActiveExperts", facts.ActiveExperts},
		{"TP", hw.TP},
	} {
		if fact.value < 1 {
			errs = append(errs, fmt.Errorf("%s is %d, must be at least 1", fact.name, fact.value))
		}
	}
	if !(hw.PeakFlopsBF16 > 0) || math.IsInf(hw.PeakFlopsBF16, 1) {
		errs = append(errs, fmt.Errorf("PeakFlopsBF16 is %g, must be positive and finite", hw.PeakFlopsBF16))
	}
	if !(hw.PeakBandwidth > 0) || math.IsInf(hw.PeakBandwidth, 1) {
		errs = append(errs, fmt.Errorf("PeakBandwidth is %g, must be positive and finite", hw.PeakBandwidth))
	}
	if facts.ActiveExperts > facts.NumExperts {
		errs = append(errs, fmt.Errorf("ActiveExperts %d exceeds NumExperts %d", facts.ActiveExperts, facts.NumExperts))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("steptime: bad facts for target %q: %w", formula.Target, errors.Join(errs...))
	}
	return &Model{formula: formula, facts: facts, hardware: hw, overheads: overheads}, nil
}

// Formula returns the formula the model predicts step times with.
func (m *Model) Formula() Formula { return m.formula }

// StepTime predicts the time of one engine step that runs the batch: the formula on the
// batch's features (ComputeFeatures), rounded to whole microseconds by Micros.
func (m *Model) StepTime(batch []*Request) int64 {
	return Micros(m.formula.Predict(ComputeFeatures(batch, m.facts, m.hardware)))
}

// QueueingTime returns the configured constant; the request does not change it.
func (m *Model) QueueingTime(*Request) int64 { return m.overheads.QueueingUS }

// OutputTokenProcessingTime returns the configured constant.
func (m *Model) OutputTokenProcessingTime() int64 { return m.overheads.OutputTokenProcessingUS }

// SchedulingProcessingTime returns the configured constant.
func (m *Model) SchedulingProcessingTime() int64 { return m.overheads.SchedulingProcessingUS }

// PreemptionProcessingTime returns the configured constant.
func (m *Model) PreemptionProcessingTime() int64 { return m.overheads.PreemptionProcessingUS }

// MinStepUS is the shortest step time StepTime returns, as the simulator's old blackbox model
// floored its linear formula: a step always advances the simulated clock.
const MinStepUS = 1

// maxInt64Float is 2^63, the smallest float64 above every int64.
const maxInt64Float = float64(1 << 63)

// Micros rounds a predicted time in microseconds to the int64 the simulator uses: to the
// nearest microsecond, halves away from zero (math.Round), and clamped to
// [MinStepUS, math.MaxInt64].
//
// Non-finite predictions get defined values instead of Go's implementation-specific
// float-to-int conversion (which, on amd64, turns +Inf and NaN into math.MinInt64):
//   - NaN, which says nothing about the time, is treated like every other prediction below the
//     floor: MinStepUS.
//   - -Inf gives MinStepUS; +Inf, and anything from 2^63 up, gives math.MaxInt64.
func Micros(us float64) int64 {
	switch {
	case !(us >= MinStepUS): // below the floor, -Inf or NaN
		return MinStepUS
	case us >= maxInt64Float:
		return math.MaxInt64
	}
	return int64(math.Round(us))
}
