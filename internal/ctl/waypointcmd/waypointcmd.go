// Package waypointcmd is `ambitctl waypoint`: it writes and reads the Gateways that
// declare waypoints on Kubernetes (docs/waypoint.md), in the shape of istioctl's
// `waypoint apply|list|delete`. It is the only part of ambitctl that links client-go,
// so the node commands (internal/ctl) stay light.
package waypointcmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambitmesh/ambit/discovery"
)

const usage = `usage: ambitctl waypoint <apply|list|delete> [flags]

  apply  -n NS [-name waypoint] [-for service|workload|all|none] [-enroll-namespace] [-wait]
         write the waypoint Gateway (class istio-waypoint, HBONE listener on 15008);
         -enroll-namespace also labels the namespace istio.io/use-waypoint=NAME
  list   -n NS | -A
         the waypoints with their class, waypoint-for, Programmed status and address
  delete -n NS NAME... | -n NS -all
         delete waypoint Gateways (the controller's objects go with them)

common flags: -kubeconfig FILE (default $KUBECONFIG, ~/.kube/config, in-cluster),
              -class NAME (default istio-waypoint)
`

// FieldManager is ambitctl's field manager on the objects it writes.
const FieldManager = "ambitctl"

// Clients are the API clients the commands use.
type Clients struct {
	Kube    kubernetes.Interface
	Gateway gwclient.Interface
}

// Main runs `ambitctl waypoint args...` against the cluster of the kubeconfig and
// returns the exit status: 0 done, 1 failed, 2 misused.
func Main(args []string, stdout, stderr io.Writer) int {
	return run(args, stdout, stderr, connect)
}

// errUsage marks a misused command line.
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer, clients func(kubeconfig string) (Clients, error)) int {
	if len(args) < 1 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) < 1 {
			return 2
		}
		return 0
	}
	var err error
	switch args[0] {
	case "apply", "list", "delete":
		err = command(args[0], args[1:], stdout, clients)
	default:
		err = fmt.Errorf("%w: unknown waypoint command %q", errUsage, args[0])
	}
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stderr, usage)
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "ambitctl waypoint: %v\n%s", err, usage)
		return 2
	case err != nil:
		fmt.Fprintln(stderr, "ambitctl waypoint:", err)
		return 1
	}
	return 0
}

type options struct {
	kubeconfig, namespace, name, class, forWhat string
	all, allNamespaces, enroll, wait            bool
	timeout                                     time.Duration
	names                                       []string
}

func parse(cmd string, args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("ambitctl waypoint "+cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file")
	fs.StringVar(&o.namespace, "n", "", "namespace")
	fs.StringVar(&o.namespace, "namespace", "", "namespace")
	fs.StringVar(&o.class, "class", discovery.DefaultWaypointClass, "GatewayClass of waypoints")
	switch cmd {
	case "apply":
		fs.StringVar(&o.name, "name", "waypoint", "name of the waypoint")
		fs.StringVar(&o.forWhat, "for", "", "traffic the waypoint takes: service (default), workload, all or none")
		fs.BoolVar(&o.enroll, "enroll-namespace", false, "label the namespace istio.io/use-waypoint=NAME")
		fs.BoolVar(&o.wait, "wait", false, "wait until the waypoint is programmed")
		fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "how long -wait waits")
	case "list":
		fs.BoolVar(&o.allNamespaces, "A", false, "all namespaces")
		fs.BoolVar(&o.allNamespaces, "all-namespaces", false, "all namespaces")
	case "delete":
		fs.BoolVar(&o.all, "all", false, "delete every waypoint of the namespace")
		fs.StringVar(&o.name, "name", "", "name of the waypoint (or give names as arguments)")
	}
	// Flags and names may be interleaved, as with kubectl.
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return o, err
			}
			return o, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		o.names = append(o.names, args[0])
		args = args[1:]
	}
	if o.name != "" && cmd == "delete" {
		o.names = append(o.names, o.name)
	}
	switch {
	case cmd != "delete" && len(o.names) > 0:
		return o, fmt.Errorf("%w: unexpected argument %q (the waypoint's name is -name)", errUsage, o.names[0])
	case cmd == "list" && o.allNamespaces && o.namespace != "":
		return o, fmt.Errorf("%w: -n and -A exclude each other", errUsage)
	case o.namespace == "" && !(cmd == "list" && o.allNamespaces):
		return o, fmt.Errorf("%w: -n NAMESPACE is required", errUsage)
	case cmd == "delete" && o.all && len(o.names) > 0:
		return o, fmt.Errorf("%w: give waypoint names or -all, not both", errUsage)
	case cmd == "delete" && !o.all && len(o.names) == 0:
		return o, fmt.Errorf("%w: name the waypoints to delete, or -all for every waypoint of namespace %s", errUsage, o.namespace)
	}
	if cmd == "apply" {
		switch discovery.WaypointFor(o.forWhat) {
		case "", discovery.WaypointForService, discovery.WaypointForWorkload, discovery.WaypointForAll, discovery.WaypointForNone:
		default:
			return o, fmt.Errorf("%w: -for %q is not service, workload, all or none", errUsage, o.forWhat)
		}
	}
	return o, nil
}

func command(cmd string, args []string, stdout io.Writer, clients func(string) (Clients, error)) error {
	o, err := parse(cmd, args)
	if err != nil {
		return err
	}
	c, err := clients(o.kubeconfig)
	if err != nil {
		return err
	}
	ctx := context.Background()
	switch cmd {
	case "apply":
		return apply(ctx, c, o, stdout)
	case "list":
		return list(ctx, c, o, stdout)
	}
	return remove(ctx, c, o, stdout)
}

// connect builds the clients from -kubeconfig, else $KUBECONFIG or ~/.kube/config
// (with kubectl's loading rules), else the pod's in-cluster configuration.
func connect(kubeconfig string) (Clients, error) {
	rc, err := restConfig(kubeconfig)
	if err != nil {
		return Clients{}, err
	}
	rc.UserAgent = FieldManager
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return Clients{}, fmt.Errorf("kubernetes client: %w", err)
	}
	gc, err := gwclient.NewForConfig(rc)
	if err != nil {
		return Clients{}, fmt.Errorf("gateway api client: %w", err)
	}
	return Clients{Kube: kc, Gateway: gc}, nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	} else if os.Getenv(clientcmd.RecommendedConfigPathEnvVar) == "" {
		if _, err := os.Stat(filepath.Join(clientcmd.RecommendedConfigDir, clientcmd.RecommendedFileName)); err != nil {
			rc, err := rest.InClusterConfig()
			if err != nil {
				return nil, fmt.Errorf("no kubeconfig (pass -kubeconfig FILE or set KUBECONFIG) and not in a pod: %w", err)
			}
			return rc, nil
		}
	}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	return rc, nil
}

// gateway is the waypoint Gateway apply writes.
func gateway(o options) *gatewayv1.Gateway {
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: o.name, Namespace: o.namespace},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: gatewayv1.ObjectName(o.class),
			Listeners: []gatewayv1.Listener{{
				Name: "mesh", Port: discovery.WaypointPort, Protocol: discovery.WaypointProtocol,
			}},
		},
	}
	if o.forWhat != "" {
		gw.Labels = map[string]string{discovery.LabelWaypointFor: o.forWhat}
	}
	return gw
}

func apply(ctx context.Context, c Clients, o options, out io.Writer) error {
	api := c.Gateway.GatewayV1().Gateways(o.namespace)
	want := gateway(o)
	cur, err := api.Get(ctx, o.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if _, err := api.Create(ctx, want, metav1.CreateOptions{FieldManager: FieldManager}); err != nil {
			return explain(fmt.Sprintf("create Gateway %s/%s", o.namespace, o.name), err)
		}
		fmt.Fprintf(out, "waypoint %s/%s created\n", o.namespace, o.name)
	case err != nil:
		return explain(fmt.Sprintf("get Gateway %s/%s", o.namespace, o.name), err)
	case string(cur.Spec.GatewayClassName) != o.class:
		return fmt.Errorf("the Gateway %s/%s exists with class %q, not %q: it is not a waypoint; pick another -name", o.namespace, o.name, cur.Spec.GatewayClassName, o.class)
	default:
		next := cur.DeepCopy()
		next.Spec.Listeners = want.Spec.Listeners
		if o.forWhat != "" {
			if next.Labels == nil {
				next.Labels = map[string]string{}
			}
			next.Labels[discovery.LabelWaypointFor] = o.forWhat
		}
		if _, err := api.Update(ctx, next, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
			return explain(fmt.Sprintf("update Gateway %s/%s", o.namespace, o.name), err)
		}
		fmt.Fprintf(out, "waypoint %s/%s updated\n", o.namespace, o.name)
	}
	if o.enroll {
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, discovery.LabelUseWaypoint, o.name)
		if _, err := c.Kube.CoreV1().Namespaces().Patch(ctx, o.namespace, types.MergePatchType, []byte(patch),
			metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
			return explain("label namespace "+o.namespace, err)
		}
		fmt.Fprintf(out, "namespace %s labelled %s=%s\n", o.namespace, discovery.LabelUseWaypoint, o.name)
	}
	if o.wait {
		return wait(ctx, c, o, out)
	}
	return nil
}

// wait polls the Gateway until it is Programmed, or says why it is not.
func wait(ctx context.Context, c Clients, o options, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	last := ""
	for {
		gw, err := c.Gateway.GatewayV1().Gateways(o.namespace).Get(ctx, o.name, metav1.GetOptions{})
		if err == nil {
			if cond := apimeta.FindStatusCondition(gw.Status.Conditions, string(gatewayv1.GatewayConditionAccepted)); cond != nil && cond.Status == metav1.ConditionFalse {
				return fmt.Errorf("waypoint %s/%s not accepted (%s): %s", o.namespace, o.name, cond.Reason, cond.Message)
			}
			cond := apimeta.FindStatusCondition(gw.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed))
			if cond != nil && cond.Status == metav1.ConditionTrue {
				fmt.Fprintf(out, "waypoint %s/%s programmed at %s\n", o.namespace, o.name, addresses(gw))
				return nil
			}
			if cond != nil {
				last = cond.Reason + ": " + cond.Message
			}
		}
		select {
		case <-ctx.Done():
			if last == "" {
				last = "no status: is the waypoint controller (ambit-controller) running?"
			}
			return fmt.Errorf("waypoint %s/%s not programmed after %s (%s)", o.namespace, o.name, o.timeout, last)
		case <-time.After(time.Second):
		}
	}
}

func list(ctx context.Context, c Clients, o options, out io.Writer) error {
	ns := o.namespace
	if o.allNamespaces {
		ns = ""
	}
	gws, err := c.Gateway.GatewayV1().Gateways(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return explain("list Gateways", err)
	}
	var wps []gatewayv1.Gateway
	for _, g := range gws.Items {
		if string(g.Spec.GatewayClassName) == o.class {
			wps = append(wps, g)
		}
	}
	if len(wps) == 0 {
		where := "namespace " + o.namespace
		if o.allNamespaces {
			where = "any namespace"
		}
		fmt.Fprintf(out, "no waypoints in %s\n", where)
		return nil
	}
	slices.SortFunc(wps, func(a, b gatewayv1.Gateway) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	if o.allNamespaces {
		fmt.Fprint(tw, "NAMESPACE\t")
	}
	fmt.Fprintln(tw, "NAME\tCLASS\tWAYPOINT-FOR\tPROGRAMMED\tADDRESS")
	for _, g := range wps {
		if o.allNamespaces {
			fmt.Fprintf(tw, "%s\t", g.Namespace)
		}
		forWhat := g.Labels[discovery.LabelWaypointFor]
		if forWhat == "" {
			forWhat = string(discovery.WaypointForService)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", g.Name, g.Spec.GatewayClassName, forWhat, programmed(&g), addresses(&g))
	}
	return tw.Flush()
}

// programmed is the Programmed condition in a word, with the reason when not True.
func programmed(g *gatewayv1.Gateway) string {
	if cond := apimeta.FindStatusCondition(g.Status.Conditions, string(gatewayv1.GatewayConditionAccepted)); cond != nil && cond.Status == metav1.ConditionFalse {
		return "False (not accepted: " + cond.Reason + ")"
	}
	cond := apimeta.FindStatusCondition(g.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed))
	switch {
	case cond == nil:
		return "Unknown"
	case cond.Status == metav1.ConditionTrue:
		return "True"
	}
	return string(cond.Status) + " (" + cond.Reason + ")"
}

func addresses(g *gatewayv1.Gateway) string {
	var as []string
	for _, a := range g.Status.Addresses {
		as = append(as, a.Value)
	}
	if len(as) == 0 {
		return "-"
	}
	return strings.Join(as, ",")
}

func remove(ctx context.Context, c Clients, o options, out io.Writer) error {
	api := c.Gateway.GatewayV1().Gateways(o.namespace)
	names := o.names
	if o.all {
		gws, err := api.List(ctx, metav1.ListOptions{})
		if err != nil {
			return explain("list Gateways", err)
		}
		for _, g := range gws.Items {
			if string(g.Spec.GatewayClassName) == o.class {
				names = append(names, g.Name)
			}
		}
		if len(names) == 0 {
			fmt.Fprintf(out, "no waypoints in namespace %s\n", o.namespace)
			return nil
		}
	}
	var errs []error
	for _, n := range names {
		g, err := api.Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			errs = append(errs, explain(fmt.Sprintf("get Gateway %s/%s", o.namespace, n), err))
			continue
		}
		if string(g.Spec.GatewayClassName) != o.class {
			errs = append(errs, fmt.Errorf("the Gateway %s/%s has class %q: not a waypoint, not deleted", o.namespace, n, g.Spec.GatewayClassName))
			continue
		}
		if err := api.Delete(ctx, n, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &g.UID}}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, explain(fmt.Sprintf("delete Gateway %s/%s", o.namespace, n), err))
			continue
		}
		fmt.Fprintf(out, "waypoint %s/%s deleted\n", o.namespace, n)
	}
	// A namespace still bound to a deleted waypoint is refused, never sent around it.
	if ns, err := c.Kube.CoreV1().Namespaces().Get(ctx, o.namespace, metav1.GetOptions{}); err == nil {
		if b := ns.Labels[discovery.LabelUseWaypoint]; slices.Contains(names, b) && ns.Labels[discovery.LabelUseWaypointNamespace] == "" {
			fmt.Fprintf(out, "namespace %s is still labelled %s=%s: its traffic is refused until that waypoint exists again "+
				"(kubectl label namespace %s %s- to send it direct)\n", o.namespace, discovery.LabelUseWaypoint, b, o.namespace, discovery.LabelUseWaypoint)
		}
	}
	return errors.Join(errs...)
}

// explain wraps an API error with what to do about the common ones.
func explain(what string, err error) error {
	switch {
	case apierrors.IsNotFound(err) && strings.Contains(err.Error(), "the server could not find the requested resource"):
		return fmt.Errorf("%s: the cluster does not serve the Gateway API (install its CRDs, e.g. helm ... --set gatewayAPICRDs.install=true): %w", what, err)
	case apierrors.IsNotFound(err):
		return fmt.Errorf("%s: %w", what, err)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%s: your user may not do this (RBAC): %w", what, err)
	case apierrors.IsInvalid(err):
		return fmt.Errorf("%s: the API server refused it: %w", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
