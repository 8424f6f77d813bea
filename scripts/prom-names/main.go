// Command prom-names prints the Prometheus names that Prometheus' own OTLP
// translation library (github.com/prometheus/otlptranslator) gives to OTLP
// metrics and attributes, with the default strategy of Prometheus' OTLP
// receiver (UnderscoreEscapingWithSuffixes, no namespace).
//
// Input, one metric per line on stdin, tab-separated:
//
//	name  unit  kind  attribute,attribute,...
//
// where kind is the OTLP data type as it arrives on the wire: monotonic_sum,
// sum (not monotonic), gauge or histogram. Output, one line per input line:
//
//	prometheus_name  label,label,...
//
// tests/contract.rs runs it; scripts/tools builds it.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"github.com/prometheus/otlptranslator"
)

// metricType maps an OTLP data type to the translator's type the way
// Prometheus' OTLP receiver does: sums by monotonicity.
func metricType(kind string) (otlptranslator.MetricType, error) {
	switch kind {
	case "monotonic_sum":
		return otlptranslator.MetricTypeMonotonicCounter, nil
	case "sum":
		return otlptranslator.MetricTypeNonMonotonicCounter, nil
	case "gauge":
		return otlptranslator.MetricTypeGauge, nil
	case "histogram":
		return otlptranslator.MetricTypeHistogram, nil
	}
	return otlptranslator.MetricTypeUnknown, fmt.Errorf("unknown kind %q (monotonic_sum, sum, gauge or histogram)", kind)
}

func translate(line string, metrics otlptranslator.MetricNamer, labels otlptranslator.LabelNamer) (string, error) {
	fields := strings.Split(line, "\t")
	if len(fields) != 4 {
		return "", fmt.Errorf("want 4 tab-separated fields, got %d", len(fields))
	}
	kind, err := metricType(fields[2])
	if err != nil {
		return "", err
	}
	name, err := metrics.Build(otlptranslator.Metric{Name: fields[0], Unit: fields[1], Type: kind})
	if err != nil {
		return "", err
	}
	var out []string
	for _, attribute := range strings.Split(fields[3], ",") {
		if attribute == "" {
			continue
		}
		label, err := labels.Build(attribute)
		if err != nil {
			return "", err
		}
		out = append(out, label)
	}
	return name + "\t" + strings.Join(out, ","), nil
}

func main() {
	metrics := otlptranslator.NewMetricNamer("", otlptranslator.UnderscoreEscapingWithSuffixes)
	labels := otlptranslator.LabelNamer{}
	input := bufio.NewScanner(os.Stdin)
	output := bufio.NewWriter(os.Stdout)
	defer output.Flush()
	for number := 1; input.Scan(); number++ {
		translated, err := translate(input.Text(), metrics, labels)
		if err != nil {
			fmt.Fprintf(os.Stderr, "prom-names: line %d: %v\n", number, err)
			output.Flush()
			os.Exit(1)
		}
		fmt.Fprintln(output, translated)
	}
	if err := input.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "prom-names: reading stdin: %v\n", err)
		os.Exit(1)
	}
}
