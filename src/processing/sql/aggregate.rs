//! A windowed `sql` transform's query: `SELECT … FROM records [WHERE …] GROUP BY … [HAVING …]`,
//! planned with DataFusion's SQL planner as the stateless query is, and run incrementally with
//! DataFusion's own aggregate accumulators (count, sum, avg, min, max, approx_distinct,
//! percentiles, …): the rows under the aggregate (filter, projections) are evaluated per batch
//! of records; each group of each open window keeps one accumulator per aggregate; when the
//! window closes, the groups' values become a batch that the nodes above the aggregate (HAVING,
//! the select list) turn into the output rows.
//!
//! Accumulators are fed in the order records are given, in the chunks they are given; the window
//! stage gives them frame by frame, which a crash does not change, so a rebuilt window gives the
//! very same floating-point sums.
//!
//! Must not: read the clock or do I/O.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion_common::{DataFusionError, ScalarValue};
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::{Accumulator, Expr, LogicalPlan};
use datafusion_physical_expr::PhysicalExpr;
use datafusion_physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};

use super::engine::{Catalog, Planned, Program, compile, compile_above, one_line, to_json_lines};

/// A grouped query compiled for one table.
pub struct AggregateQuery {
    /// The rows the aggregate reads: the scan's columns, WHERE, projections under it.
    input: Program,
    groups: Vec<Arc<dyn PhysicalExpr>>,
    /// The group columns in Arrow's row format (keys must be read back by the converter that
    /// wrote them).
    converter: RowConverter,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// The aggregate node's output: group columns, then one column per aggregate.
    aggregated: SchemaRef,
    /// HAVING and the select list, over `aggregated`.
    output: Program,
}

/// Why a query cannot run as a windowed aggregate.
pub fn check(query: &str, schema: SchemaRef) -> Result<(), String> {
    AggregateQuery::plan(query, schema).map(drop)
}

impl AggregateQuery {
    pub fn plan(query: &str, schema: SchemaRef) -> Result<AggregateQuery, String> {
        let catalog = Catalog::new();
        let plan = catalog.logical_plan(query, schema).map_err(planned_message)?;
        let props = ExecutionProps::new();
        let Some(node) = find_aggregate(&plan) else {
            return Err(
                "a windowed query must aggregate: GROUP BY, or aggregate functions such as count(*), sum(…), avg(…)"
                    .into(),
            );
        };
        let output =
            Program { steps: compile_above(&plan, &props, true).map_err(planned_message)?, missing: Vec::new() };
        if node.group_expr.iter().any(|expr| matches!(expr, Expr::GroupingSet(_))) {
            return Err("GROUPING SETS, CUBE and ROLLUP are not supported in a windowed query".into());
        }
        let input = Program { steps: compile(&node.input, &props).map_err(planned_message)?, missing: Vec::new() };
        let input_schema = node.input.schema();
        let physical_input: Schema = input_schema.as_arrow().clone();
        let context = datafusion_expr::physical_planning_context::PhysicalPlanningContext::default();
        let groups = node
            .group_expr
            .iter()
            .map(|expr| datafusion_physical_expr::create_physical_expr(expr, input_schema, &props, &context))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| one_line(&error))?;
        let group_fields = groups
            .iter()
            .map(|group| group.data_type(&physical_input).map(SortField::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| one_line(&error))?;
        let mut aggregates = Vec::new();
        for expr in &node.aggr_expr {
            let lowered = LoweredAggregateBuilder::new(expr, input_schema, &physical_input, &props, &context)
                .build()
                .map_err(|error| one_line(&error))?;
            if lowered.filter.is_some() {
                return Err("aggregate FILTER (WHERE …) is not supported in a windowed query; use WHERE or CASE".into());
            }
            aggregates.push(lowered.aggregate);
        }
        // Every column nullable: a group whose values are all NULL gives NULLs.
        let fields: Vec<Field> = node
            .schema
            .fields()
            .iter()
            .map(|field| Field::new(field.name(), field.data_type().clone(), true))
            .collect();
        let converter = RowConverter::new(group_fields).map_err(|error| error.to_string())?;
        Ok(AggregateQuery { input, groups, converter, aggregates, aggregated: Arc::new(Schema::new(fields)), output })
    }

    /// The rows the aggregate reads from `batch` (after WHERE), with each one's row in `batch`.
    pub fn input_rows(&self, batch: RecordBatch) -> Result<(Vec<usize>, RecordBatch), DataFusionError> {
        self.input.evaluate(batch)
    }

    /// The group key of each row of an input batch (None for all: no GROUP BY), and each
    /// aggregate's argument columns.
    pub fn keys_and_arguments(
        &self,
        input: &RecordBatch,
    ) -> Result<(Vec<GroupKey>, Vec<Vec<ArrayRef>>), DataFusionError> {
        let rows = input.num_rows();
        let columns = self
            .groups
            .iter()
            .map(|group| group.evaluate(input).and_then(|value| value.into_array(rows)))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = if columns.is_empty() {
            vec![None; rows]
        } else {
            let converted = self.converter.convert_columns(&columns)?;
            (0..rows).map(|row| Some(converted.row(row).owned())).collect()
        };
        let arguments = self
            .aggregates
            .iter()
            .map(|aggregate| {
                aggregate
                    .expressions()
                    .iter()
                    .map(|argument| argument.evaluate(input).and_then(|value| value.into_array(rows)))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((keys, arguments))
    }

    /// One accumulator per aggregate, for a new group.
    pub fn accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>, DataFusionError> {
        self.aggregates.iter().map(|aggregate| aggregate.create_accumulator()).collect()
    }

    /// Feed `rows` (indices into the argument columns) to a group's accumulators.
    pub fn update(
        accumulators: &mut [Box<dyn Accumulator>],
        arguments: &[Vec<ArrayRef>],
        rows: &[u32],
    ) -> Result<(), DataFusionError> {
        let indices = UInt32Array::from(rows.to_vec());
        for (accumulator, columns) in accumulators.iter_mut().zip(arguments) {
            let taken = columns.iter().map(|column| take(column, &indices, None)).collect::<Result<Vec<_>, _>>()?;
            accumulator.update_batch(&taken)?;
        }
        Ok(())
    }

    /// The output rows (compact JSON objects) of one window's groups, in the order the groups
    /// first appeared.
    pub fn finish(&self, groups: Vec<(GroupKey, Vec<Box<dyn Accumulator>>)>) -> Result<Vec<Vec<u8>>, DataFusionError> {
        let count = groups.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.aggregated.fields().len());
        let mut values: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(count); self.aggregates.len()];
        let mut keys = Vec::with_capacity(count);
        for (key, mut accumulators) in groups {
            for (index, accumulator) in accumulators.iter_mut().enumerate() {
                values[index].push(accumulator.evaluate()?);
            }
            keys.push(key);
        }
        if !self.groups.is_empty() {
            let rows = keys.iter().flatten().map(OwnedRow::row);
            columns.extend(self.converter.convert_rows(rows)?);
        }
        for (index, values) in values.into_iter().enumerate() {
            let field = &self.aggregated.fields()[self.groups.len() + index];
            let array = if values.is_empty() {
                arrow::array::new_empty_array(field.data_type())
            } else {
                ScalarValue::iter_to_array(values)?
            };
            // The accumulator's own type where the planner's differs only in nullability/metadata.
            let array = if array.data_type() == field.data_type() {
                array
            } else {
                arrow::compute::cast(&array, field.data_type())?
            };
            columns.push(array);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(count));
        let batch = RecordBatch::try_new_with_options(self.aggregated.clone(), columns, &options)?;
        let (_, output) = self.output.evaluate(batch)?;
        to_json_lines(&output)
    }
}

/// The aggregate node under the HAVING / select-list nodes, if the query has one.
fn find_aggregate(plan: &LogicalPlan) -> Option<&datafusion_expr::logical_plan::Aggregate> {
    match plan {
        LogicalPlan::Aggregate(node) => Some(node),
        LogicalPlan::Projection(projection) => find_aggregate(&projection.input),
        LogicalPlan::Filter(filter) => find_aggregate(&filter.input),
        LogicalPlan::SubqueryAlias(alias) => find_aggregate(&alias.input),
        _ => None,
    }
}

fn planned_message(planned: Planned) -> String {
    match planned {
        Planned::DataFusion(error) => one_line(&error),
        Planned::NotStateless(message) => message,
    }
}

/// A group's key: its GROUP BY values in Arrow's row format (None: the one group of a query
/// without GROUP BY).
pub type GroupKey = Option<OwnedRow>;

/// Keys by group, for a window's groups in first-seen order.
pub type GroupIndex = HashMap<GroupKey, usize>;
